//! The HTTP routes, one module per resource.

pub mod fallback;
pub mod health;
pub mod jobs;
pub mod submit;
