//! The threads that serve requests, apart from the control plane (the snapshot writer,
//! discovery, health checks, the admin API), which runs on its own runtime: a reload that
//! builds a 20,000-endpoint table, or the dropping of an old one, never stalls a request.
//!
//! Two shapes, chosen with `--threading`:
//! - `per-core` (nginx's model): one single-threaded runtime per worker, each with its own
//!   `SO_REUSEPORT` listener per port; the kernel spreads connections over them, and a
//!   connection and its upstream connections never leave their thread (no work-stealing
//!   queues, no cross-thread wake-ups; the upstream pool is per thread already).
//! - `shared`: one work-stealing runtime with all the workers behind one listener per port.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Builder, Handle, Runtime};

/// How the data plane's workers share connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Threading {
    /// One single-threaded runtime per worker, one `SO_REUSEPORT` listener each.
    PerCore,
    /// One work-stealing runtime for all workers.
    Shared,
}

/// The running data plane: the runtimes, kept alive for as long as this value lives.
pub struct DataPlane {
    handles: Vec<Handle>,
    /// The shared runtime (per-core runtimes live on their own threads).
    _shared: Option<Runtime>,
}

impl DataPlane {
    /// Starts `workers` worker threads.
    pub fn start(workers: usize, threading: Threading) -> std::io::Result<Self> {
        let workers = workers.max(1);
        if threading == Threading::Shared {
            let rt = Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("locus-worker")
                .enable_all()
                .build()?;
            return Ok(DataPlane {
                handles: vec![rt.handle().clone()],
                _shared: Some(rt),
            });
        }
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let rt = Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("locus-worker-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(DataPlane {
            handles,
            _shared: None,
        })
    }

    /// Where listeners are spawned.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}

/// Binds `addr` once per runtime in `handles` (with `SO_REUSEPORT` when more than one, all on
/// the port the first one got), each listener registered with its own runtime.
pub fn bind(addr: SocketAddr, handles: &[Handle]) -> std::io::Result<Vec<(Handle, TcpListener)>> {
    if handles.len() > 1 && addr.port() != 0 {
        // SO_REUSEPORT would let a second gateway on the same port share it silently: a plain
        // bind first fails as it should when the port is taken.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As std's bind does on Unix: a restarted gateway rebinds at once.
        socket.set_reuseaddr(true)?;
        if handles.len() > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        let listener = {
            let _in_its_runtime = handle.enter();
            socket.listen(1024)?
        };
        addr = listener.local_addr()?;
        out.push((handle.clone(), listener));
    }
    Ok(out)
}
