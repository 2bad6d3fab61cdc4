"""The export pipeline: plan, the vision graph, verification, the job that writes the folder."""
