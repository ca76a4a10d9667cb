//! Allowlisted shell commands, locally or over SSH (helper B)
