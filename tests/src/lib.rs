//! test support
pub mod mariadb;
