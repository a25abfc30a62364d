//! A small key-value store over TCP, as torchrun's: rank 0 serves it at MASTER_ADDR:MASTER_PORT
//! and every rank (rank 0 included) connects to it as a client. Takes keys and byte values;
//! gives them to any rank that asks. The ranks meet through it ([`rendezvous`]) and swap what
//! the collectives need to connect (the TCP group's port, NCCL's unique id).
//!
//! The wire format is one request and one answer per exchange: a request is an operation byte,
//! the key (u32 length, bytes) and the value (u64 length, bytes); an answer is a status byte and
//! a value (u64 length, bytes). Integers are little-endian. Waiting for a key is polling on the
//! client side, so the server never blocks on a key and a client's timeout is its own.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const FOUND: u8 = 1;
const ABSENT: u8 = 0;

/// How often a waiting client asks again for a key that is not there yet.
const POLL: Duration = Duration::from_millis(20);

/// A connection to the job's store; rank 0's also runs the server.
pub struct Store {
    conn: TcpStream,
    server: Option<Server>,
    addr: String,
    port: u16,
}

impl Store {
    /// Rank 0 (`serve`) listens on `port` (0: any free port, see [`Store::port`]) and connects
    /// to itself; the others connect to `addr:port`, trying again until `timeout` passes, since
    /// rank 0 may start after them.
    pub fn start(addr: &str, port: u16, serve: bool, timeout: Duration) -> Result<Store> {
        let (server, port) = if serve {
            let server = Server::start(addr, port)?;
            let port = server.port;
            (Some(server), port)
        } else {
            (None, port)
        };
        let conn = connect_with_retry(addr, port, timeout)
            .with_context(|| format!("cannot reach rank 0's store at {addr}:{port}"))?;
        conn.set_nodelay(true)?;
        Ok(Store {
            conn,
            server,
            addr: addr.to_string(),
            port,
        })
    }

    /// The port the store listens on (the one asked for, or the one picked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the store was reached at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether this process serves the store (rank 0).
    pub fn is_server(&self) -> bool {
        self.server.is_some()
    }

    /// Sets `key` to `value`, replacing any earlier value.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.request(OP_SET, key, value).map(|_| ())
    }

    /// The value of `key`, or None if no rank has set it yet.
    pub fn try_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        self.request(OP_GET, key, &[])
    }

    /// The value of `key`, waiting up to `timeout` for some rank to set it.
    pub fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let mut values = self
            .wait(&[key], timeout)
            .map_err(|missing| match missing {
                Missing::Keys(_) => anyhow!("no rank set `{key}` within {}", secs(timeout)),
                Missing::Failed(e) => e,
            })?;
        Ok(values.remove(0))
    }

    /// The values of `keys`, waiting up to `timeout` until all are set. On timeout the error
    /// lists the keys still missing.
    pub fn wait(&mut self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>, Missing> {
        let deadline = Instant::now() + timeout;
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        loop {
            for (k, v) in keys.iter().zip(values.iter_mut()) {
                if v.is_none() {
                    *v = self.try_get(k).map_err(Missing::Failed)?;
                }
            }
            if values.iter().all(Option::is_some) {
                return Ok(values.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                let missing = keys
                    .iter()
                    .zip(&values)
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k.to_string())
                    .collect();
                return Err(Missing::Keys(missing));
            }
            std::thread::sleep(POLL);
        }
    }

    fn request(&mut self, op: u8, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        let what = || format!("the store at {}:{} stopped answering", self.addr, self.port);
        let mut frame = Vec::with_capacity(13 + key.len() + value.len());
        frame.push(op);
        frame.extend_from_slice(&(key.len() as u32).to_le_bytes());
        frame.extend_from_slice(key.as_bytes());
        frame.extend_from_slice(&(value.len() as u64).to_le_bytes());
        frame.extend_from_slice(value);
        self.conn.write_all(&frame).with_context(what)?;
        let mut status = [0u8];
        self.conn.read_exact(&mut status).with_context(what)?;
        let answer = read_bytes(&mut self.conn).with_context(what)?;
        Ok((status[0] == FOUND).then_some(answer))
    }
}

/// Why [`Store::wait`] returned without every key.
#[derive(Debug)]
pub enum Missing {
    /// These keys were still unset when the time ran out.
    Keys(Vec<String>),
    /// The store could not be asked.
    Failed(anyhow::Error),
}

/// Waits until all `world` ranks have arrived at the store, each calling this once with its
/// rank. Rank 0 waits up to `timeout` for the others and names those that did not come; the
/// others wait for rank 0's word that everyone is there, and on timeout also name who is
/// missing, so every rank's error says the same thing.
pub fn rendezvous(store: &mut Store, rank: usize, world: usize, timeout: Duration) -> Result<()> {
    store.set(&arrived_key(rank), b"1")?;
    let keys: Vec<String> = (0..world).map(arrived_key).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    if rank == 0 {
        match store.wait(&keys, timeout) {
            Ok(_) => store.set(COMPLETE, b"1"),
            Err(Missing::Keys(missing)) => Err(absent(&missing, world, timeout)),
            Err(Missing::Failed(e)) => Err(e),
        }
    } else {
        match store.wait(&[COMPLETE], timeout) {
            Ok(_) => Ok(()),
            Err(Missing::Keys(_)) => {
                let missing: Vec<String> = keys
                    .iter()
                    .filter_map(|k| match store.try_get(k) {
                        Ok(Some(_)) => None,
                        _ => Some(k.to_string()),
                    })
                    .collect();
                Err(absent(&missing, world, timeout))
            }
            Err(Missing::Failed(e)) => Err(e),
        }
    }
}

const COMPLETE: &str = "rendezvous/complete";

fn arrived_key(rank: usize) -> String {
    format!("rendezvous/arrived/{rank}")
}

fn absent(missing_keys: &[String], world: usize, timeout: Duration) -> anyhow::Error {
    let ranks: Vec<String> = missing_keys
        .iter()
        .filter_map(|k| k.strip_prefix("rendezvous/arrived/"))
        .map(str::to_string)
        .collect();
    let (noun, list) = match ranks.len() {
        1 => ("rank", ranks[0].clone()),
        _ => ("ranks", ranks.join(", ")),
    };
    anyhow!(
        "{noun} {list} of {world} did not arrive at the rendezvous within {} (did they start, with the same MASTER_ADDR and MASTER_PORT?)",
        secs(timeout)
    )
}

/// A duration as people read it in an error: `30 s`, `0.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Connects to `addr:port`, trying every address the name resolves to, again and again until
/// `timeout` passes.
pub(crate) fn connect_with_retry(addr: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (addr, port)
            .to_socket_addrs()
            .map_err(anyhow::Error::from)
            .and_then(|addrs| {
                let mut last = anyhow!("`{addr}` resolves to no address");
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match TcpStream::connect_timeout(&a, left.clamp(POLL, Duration::from_secs(5))) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.into(),
                    }
                }
                Err(last)
            });
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("gave up after {}", secs(timeout))))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The address a listener of rank 0 binds: loopback when the master address is local only
/// (then nothing outside this machine can reach it), every interface otherwise, since the name
/// other nodes use for this host may resolve to any of them.
pub(crate) fn bind_addr(master: &str, port: u16) -> SocketAddr {
    let local_only = (master, port)
        .to_socket_addrs()
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    let ip = if local_only {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, port)
}

/// Reads a u64 length and that many bytes.
pub(crate) fn read_bytes(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len) as usize;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Rank 0's server: one thread accepting connections, one per connection answering requests.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    wake: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

type Table = Arc<Mutex<HashMap<String, Vec<u8>>>>;

impl Server {
    fn start(master: &str, port: u16) -> Result<Server> {
        let bind = bind_addr(master, port);
        let listener = TcpListener::bind(bind).with_context(|| {
            format!("rank 0 cannot serve the store on {bind} (is the port in use? set MASTER_PORT to a free one)")
        })?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let table: Table = Arc::default();
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("recap-store".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let table = table.clone();
                        // A connection that fails ends its own thread; the others go on.
                        let _ = std::thread::Builder::new()
                            .name("recap-store-conn".into())
                            .spawn(move || {
                                let _ = serve(conn, &table);
                            });
                    }
                })?
        };
        let wake_ip = match bind.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Server {
            port,
            stop,
            wake: SocketAddr::new(wake_ip, port),
            accept: Some(accept),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The accept loop notices the flag on its next connection, which this one provides.
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(s) = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1)) {
            let _ = s.shutdown(Shutdown::Both);
            if let Some(h) = self.accept.take() {
                let _ = h.join();
            }
        }
    }
}

/// Answers one client's requests until it hangs up.
fn serve(conn: TcpStream, table: &Table) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = BufWriter::new(conn);
    loop {
        let mut op = [0u8];
        if r.read_exact(&mut op).is_err() {
            return Ok(());
        }
        let mut klen = [0u8; 4];
        r.read_exact(&mut klen)?;
        let mut key = vec![0u8; u32::from_le_bytes(klen) as usize];
        r.read_exact(&mut key)?;
        let key = String::from_utf8(key)?;
        let value = read_bytes(&mut r)?;
        let mut table = table.lock().map_err(|_| anyhow!("store poisoned"))?;
        let (status, answer) = match op[0] {
            OP_SET => {
                table.insert(key, value);
                (FOUND, Vec::new())
            }
            OP_GET => match table.get(&key) {
                Some(v) => (FOUND, v.clone()),
                None => (ABSENT, Vec::new()),
            },
            other => bail!("unknown store operation {other}"),
        };
        drop(table);
        w.write_all(&[status])?;
        w.write_all(&(answer.len() as u64).to_le_bytes())?;
        w.write_all(&answer)?;
        w.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "127.0.0.1";

    #[test]
    fn set_get_and_wait_between_clients() {
        let mut a = Store::start(LOCAL, 0, true, Duration::from_secs(5)).unwrap();
        let mut b = Store::start(LOCAL, a.port(), false, Duration::from_secs(5)).unwrap();
        assert_eq!(a.try_get("k").unwrap(), None);
        b.set("k", b"value").unwrap();
        assert_eq!(a.get("k", Duration::from_secs(1)).unwrap(), b"value");
        b.set("k", b"").unwrap();
        assert_eq!(a.try_get("k").unwrap(), Some(Vec::new()));
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            b.set("late", b"x").unwrap();
        });
        assert_eq!(a.get("late", Duration::from_secs(5)).unwrap(), b"x");
        writer.join().unwrap();
        match a.wait(&["late", "never"], Duration::from_millis(50)) {
            Err(Missing::Keys(k)) => assert_eq!(k, vec!["never".to_string()]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_client_waits_for_a_server_that_starts_later() {
        let port = TcpListener::bind((LOCAL, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = std::thread::spawn(move || {
            let mut s = Store::start(LOCAL, port, false, Duration::from_secs(10)).unwrap();
            s.get("hello", Duration::from_secs(10)).unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut server = Store::start(LOCAL, port, true, Duration::from_secs(5)).unwrap();
        server.set("hello", b"world").unwrap();
        assert_eq!(client.join().unwrap(), b"world");
    }

    #[test]
    fn no_server_is_an_error_after_the_timeout() {
        let port = TcpListener::bind((LOCAL, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let err = Store::start(LOCAL, port, false, Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            format!("{err:#}").starts_with(&format!(
                "cannot reach rank 0's store at 127.0.0.1:{port}: gave up after 0.3 s"
            )),
            "{err:#}"
        );
    }
}
