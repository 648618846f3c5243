"""State shared by workflow runs in one test process (passed through the workflow sandbox)."""

task_failures: dict = {}
