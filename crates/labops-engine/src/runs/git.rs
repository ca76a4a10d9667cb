//! git-commit executor (helper C)
