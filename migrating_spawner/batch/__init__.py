"""Batch notebooks that survive reclaims: jupyter-scheduler jobs that resume at the next cell.

- `progress.py`: the job's resume folder (inside its staging folder, so inside the home):
  what ran, which kernel snapshot is kept, pauses, interruptions, resumes. Pure file I/O.
- `executor.py`: `ResumableExecutionManager`, jupyter-scheduler's `execution_manager_class`:
  runs the notebook cell by cell with nbclient and checkpoints after each cell.
- `scheduler.py`: `MigratingScheduler`, jupyter-scheduler's `scheduler_class`: finds jobs
  whose process is gone and resumes them; pauses running jobs at a freeze.
- `extension.py`: the jupyter-server extension that wires it to the server's freeze/restore
  and reports running jobs as activity.
"""
