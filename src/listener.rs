//! Binds the listening socket: `unix:/path` (with care for the socket file) or
//! `HOST:PORT`, or takes the socket systemd passes through `LISTEN_FDS`.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixSocket, UnixStream};

/// A listening address as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl ListenAddr {
    /// Parses `unix:/path` or `HOST:PORT`.
    pub fn parse(text: &str) -> anyhow::Result<ListenAddr> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("{text:?}: the unix: address has no path");
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{text:?} is neither unix:/path/to.sock nor HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!("{text:?} is neither unix:/path/to.sock nor HOST:PORT");
        }
        Ok(ListenAddr::Tcp(text.to_owned()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix listener; `owned` is the socket file we created and remove on drop
    /// (`None` for a socket inherited from systemd, which systemd owns).
    Unix {
        /// The listener.
        listener: UnixListener,
        /// The socket file to remove when the listener is dropped.
        owned: Option<PathBuf>,
    },
}

/// A listening socket passed by systemd (`LISTEN_FDS`), not yet in the runtime.
#[derive(Debug)]
pub enum SystemdSocket {
    /// A Unix stream socket (`ListenStream=/path`).
    Unix(std::os::unix::net::UnixListener),
    /// A TCP socket (`ListenStream=PORT`).
    Tcp(std::net::TcpListener),
}

/// Takes the first socket systemd passes (`LISTEN_FDS`, `LISTEN_PID`), if any. Call it
/// before any thread starts: it removes those variables from the environment.
pub fn take_systemd_socket() -> anyhow::Result<Option<SystemdSocket>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if let Ok(Some(l)) = fds.take_unix_listener(0) {
        return Ok(Some(SystemdSocket::Unix(l)));
    }
    match fds.take_tcp_listener(0) {
        Ok(Some(l)) => Ok(Some(SystemdSocket::Tcp(l))),
        Ok(None) => Ok(None),
        Err(e) => Err(anyhow!(
            "the socket passed by systemd (LISTEN_FDS) is neither a Unix nor a TCP stream listener: {e}"
        )),
    }
}

/// An accepted connection.
pub enum Stream {
    /// From a TCP listener.
    Tcp(TcpStream),
    /// From a Unix listener.
    Unix(UnixStream),
}

impl Listener {
    /// Binds `addr`, with `socket_mode` for a Unix socket file.
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> anyhow::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => {
                let l = bind_tcp(a)
                    .await
                    .with_context(|| format!("failed to bind {a} (is the port in use?)"))?;
                Ok(Listener::Tcp(l))
            }
            ListenAddr::Unix(path) => bind_unix(path, socket_mode),
        }
    }

    /// Wraps a socket taken from systemd with [`take_systemd_socket`]. Must run inside
    /// the runtime.
    pub fn from_systemd(socket: SystemdSocket) -> anyhow::Result<Listener> {
        match socket {
            SystemdSocket::Unix(l) => {
                l.set_nonblocking(true)
                    .context("cannot use the socket passed by systemd")?;
                let listener =
                    UnixListener::from_std(l).context("cannot use the socket passed by systemd")?;
                Ok(Listener::Unix {
                    listener,
                    owned: None,
                })
            }
            SystemdSocket::Tcp(l) => {
                l.set_nonblocking(true)
                    .context("cannot use the socket passed by systemd")?;
                let listener =
                    TcpListener::from_std(l).context("cannot use the socket passed by systemd")?;
                Ok(Listener::Tcp(listener))
            }
        }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok(Stream::Unix(s))
            }
        }
    }

    /// A description of the bound address, for logs and tests (`127.0.0.1:PORT` for
    /// TCP, so port 0 can be used).
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix { listener, .. } => listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix (inherited)".into()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix {
            owned: Some(path), ..
        } = self
        {
            if is_socket(path) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// Pending connections the kernel holds for us (capped by `net.core.somaxconn`): while
/// every connection slot is taken, new clients wait here rather than being refused.
const BACKLOG: u32 = 4096;

/// Binds `HOST:PORT` (the first address it resolves to that binds) with [`BACKLOG`].
async fn bind_tcp(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to bind")))
}

/// Binds a Unix socket: a stale socket file left by a previous run is replaced, a live
/// one (another process answers) or anything that is not a socket is left alone.
fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<Listener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the socket directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "failed to bind unix:{}: another process is listening on it (is xhubd already running?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "failed to bind unix:{}: the path exists and is not a socket; remove it or choose another --listen",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot inspect {}", path.display()));
        }
    }
    let listener = UnixSocket::new_stream()
        .and_then(|s| s.bind(path).map(|()| s))
        .and_then(|s| s.listen(BACKLOG))
        .with_context(|| format!("failed to bind unix:{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(Listener::Unix {
        listener,
        owned: Some(path.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_tcp_addresses() {
        assert_eq!(
            ListenAddr::parse("unix:/run/x.sock").unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080").unwrap(),
            ListenAddr::Tcp("127.0.0.1:8080".into())
        );
        assert!(ListenAddr::parse("[::1]:0").is_ok());
        assert!(ListenAddr::parse("unix:").is_err());
        assert!(ListenAddr::parse("localhost").is_err());
        assert!(ListenAddr::parse("localhost:http").is_err());
        assert!(ListenAddr::parse(":80").is_err());
    }
}
