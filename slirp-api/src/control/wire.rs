//! What the control protocol's client and server agree on: the limits, the
//! deadline, and that every reply type can say "nothing was done, because".

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest request a server reads, in bytes (a removal of every
/// forward of a 3000-port tcp,udp range is about 340 KiB).
pub const MAX_REQUEST: usize = 1 << 20;
/// The largest reply a client reads, in bytes: far more than every port of
/// every protocol on a few addresses, so only a runaway peer meets it.
pub const MAX_REPLY: usize = 64 << 20;
/// How long a client may take to send its whole request, from the moment
/// it is accepted; and, once the answer is ready, to take the whole reply.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Clients a server serves at once; the next is told so at once.
pub const MAX_CLIENTS: usize = 32;

/// A reply of a control protocol: one JSON value, which can say that
/// nothing was done and why. The server answers with it when it refuses a
/// client itself (another user, too many at once, a request that is late,
/// too large or malformed).
pub trait ControlReply: Serialize + DeserializeOwned {
    /// The reply saying that nothing was done, because of `message`.
    fn error(message: String) -> Self;
}
