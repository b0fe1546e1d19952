//! HTTP/1.1 pieces both sides share, depending on nothing above them: listening sockets, the chunked
//! transfer coding, what a request head means, and the responses we write.
//!
//! The server (`server/`) reads requests with these, the API (`api/`) routes on a [`RequestHead`] and
//! answers with a [`Response`], the upstream client (`upstream/`) decodes chunked responses, and the
//! simulator serves with them. None of them needs to know the others to use this module.

pub(crate) mod chunked;
pub mod request;
pub mod response;

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

pub use request::RequestHead;
pub use response::Response;

/// Connections the kernel may hold completed but not yet accepted. tokio's `TcpListener::bind` asks for
/// 1,024; when more clients connect at once (2,000 callers opening their connections together), the
/// overflow's handshakes are dropped and retried by the client after 1 s, 3 s, 7 s: seconds of latency
/// before the server has even seen the request. Linux caps this at `net.core.somaxconn` (4,096 by default
/// since 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket for `addr` with a backlog of [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, so a
/// restart does not wait for old connections in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
