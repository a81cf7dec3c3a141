//! The operator's side of the dashboard (the `mooring-dashboard` crate renders it): the data it
//! shows ([`backend`], built by the pure [`view`]) and who may sign in ([`users`]).

pub mod backend;
pub mod users;
pub mod view;

pub use backend::OperatorBackend;
