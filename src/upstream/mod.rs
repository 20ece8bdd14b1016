//! Where requests go: upstream origins and how their names become socket addresses.

mod credentials;
pub mod egress;
mod origin;
mod resolver;
mod side;

pub use credentials::{Credentials, CredentialsError};
pub use origin::{Origin, OriginError};
pub use resolver::{Pin, ResolveError, Resolver};
pub use side::{SideClient, SideError};
