//! system-check executor (helper B)
