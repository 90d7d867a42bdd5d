"""Built-in tasks: one YAML file per task, data under tasks/data/. Python tasks (with @task) live here too."""
