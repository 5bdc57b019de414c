//! temporary
pub mod config;
pub mod csi;
pub mod shutdown;
pub mod timeutil;
