//! Tokio runtimes on threads of their own, for tests that keep the parts of a system apart
//! the way separate machines would: a node on its own shards (as `anyedge run` serves), load
//! generators and instances elsewhere. Stopped and joined on drop: no thread outlives a test.

use std::thread::JoinHandle;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct Runtimes {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Runtimes {
    /// `n` current-thread runtimes, each on its own thread named `NAME-i`.
    pub fn current_thread(n: usize, name: &str) -> Runtimes {
        let mut rts = Runtimes {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let (stop, stopped) = oneshot::channel::<()>();
            rts.handles.push(rt.handle().clone());
            rts.stops.push(stop);
            rts.threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        let _ = rt.block_on(stopped);
                        // Dropping the runtime here cancels its tasks and closes their sockets.
                    })
                    .expect("runtime thread"),
            );
        }
        rts
    }

    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i]
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
