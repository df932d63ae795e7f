//! TCP hole punching.
