//! kubernetes-task and kubernetes-deployment executors (helper C)
