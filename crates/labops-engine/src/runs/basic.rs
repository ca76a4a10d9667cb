//! external-task and milestone executors
