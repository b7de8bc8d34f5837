//! What netctl shows: the maps read back as typed values, the explanation of one flow's backend,
//! and the names the agent publishes for each frontend.

pub mod dump;
pub mod explain;
pub mod names;

pub use dump::{BackendState, ProgrammedBackend, ProgrammedService, ServiceFlag, TrackedFlow};
pub use explain::{Explanation, Scope, Step};
