"""Create what the hub needs in a (simulated) region: the checkpoint bucket, the notice
queue with its EventBridge rules. Prints the queue URL. Used by demo.sh against moto; on
AWS, README.md does the same with the console or the CLI (plus the queue policy)."""

import os

import boto3

from migrating_spawner.hosts.cloudevents import put_rule

endpoint = os.environ["MOTO_URL"]
s3 = boto3.client("s3", endpoint_url=endpoint)
sqs = boto3.client("sqs", endpoint_url=endpoint)
events = boto3.client("events", endpoint_url=endpoint)
s3.create_bucket(Bucket=os.environ.get("CHECKPOINT_BUCKET", "demo-hub-checkpoints"))
queue = sqs.create_queue(QueueName="demo-hub-notices")["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
put_rule(events, arn["QueueArn"])
print(queue)
