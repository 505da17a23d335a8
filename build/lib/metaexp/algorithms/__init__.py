"""Meta-learning algorithms: pure functions of (parameters, TaskBatch), vmapped over the tasks of a batch."""
