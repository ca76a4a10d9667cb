//! proxmox-task executor: Proxmox API actions with UPID waits (helper A)
