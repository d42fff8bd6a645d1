"""A machine simulator for EC2 under moto: `jupyterhub-migrate-ec2-sim`.

moto records EC2 API calls but never boots an instance, interrupts one or serves instance
metadata. The simulator does that part: for every instance moto reports it runs the
instance's user data on a fresh loopback address 127.0.0.N with a metadata service of its
own on that address, and on request it interrupts instances (metadata notice, EventBridge
event, then at the deadline processes killed, disk wiped, instance terminated in moto),
recommends rebalances and makes fleets of a type fail for lack of capacity.

- `metadata.py`: one instance's metadata service (IMDSv2)
- `userdata.py`: runs a cloud-config as an instance would (in a folder standing for `/`)
- `ec2proxy.py`: the EC2 endpoint the hub uses: forwards to moto, answers capacity errors
- `simulator.py`: the instances, the interruptions, the control API
- `cli.py`: the command line (`run`, `interrupt`, `rebalance`, `capacity-error`, `list`)
"""
