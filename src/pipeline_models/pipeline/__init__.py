"""The reference BaseWorker pipeline: the system under test."""
