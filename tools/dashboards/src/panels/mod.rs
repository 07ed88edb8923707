//! The panels of each dashboard, a file each.

mod fleet;
mod overview;
mod security;
mod services;
mod wan;

pub(super) use fleet::fleet;
pub(super) use overview::overview;
pub(super) use security::security;
pub(super) use services::services;
pub(super) use wan::wan;
