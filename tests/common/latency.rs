//! A TCP proxy that delays every chunk of bytes, in each direction, by a fixed time: a
//! database (or any server) as far away as a network round trip of twice that.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Listens on 127.0.0.1 (`port`) and forwards each connection to `to`, each chunk
/// `delay` later than it arrived, in order. Runs until the test process ends.
pub struct LatencyProxy {
    pub port: u16,
}

impl LatencyProxy {
    pub fn start(to: u16, delay: Duration) -> LatencyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                relay(client, server, delay);
                relay(s2, c2, delay);
            }
        });
        LatencyProxy { port }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
fn relay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
                || n == 0
            {
                return;
            }
        }
    });
    thread::spawn(move || {
        for (at, bytes) in rx {
            thread::sleep(at.saturating_duration_since(Instant::now()));
            if bytes.is_empty() || to.write_all(&bytes).is_err() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    });
}
