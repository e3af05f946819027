//! Boxes in memory from a per-thread pool. A connection's request future (about 5 KB) runs in
//! a block of its own, so that an idle keep-alive connection does not hold it, and the block
//! goes back to the thread's pool when the request is done; a request's access-log record
//! travels with its answer in one too. A request so costs no allocation for them once its
//! thread has served a few (`Box::pin` and a boxed closure were an allocation and a free each
//! per request).

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks are aligned to this; a future that needs more is not made here (a compile error).
const ALIGN: usize = 64;
/// Block sizes: powers of two from `1 << MIN_SHIFT` to `1 << MAX_SHIFT` bytes; a larger future
/// gets a block of its own that is freed, not pooled.
const MIN_SHIFT: u32 = 8;
const MAX_SHIFT: u32 = 15;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Free blocks kept per thread and size: enough for the requests that are in flight at once
/// on a busy thread; more are freed.
const KEEP: usize = 256;

struct Free {
    blocks: [Vec<NonNull<u8>>; CLASSES],
}

impl Drop for Free {
    fn drop(&mut self) {
        for (class, blocks) in self.blocks.iter_mut().enumerate() {
            for block in blocks.drain(..) {
                // SAFETY: every pooled block was allocated with this class's layout.
                unsafe { std::alloc::dealloc(block.as_ptr(), class_layout(class)) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<Free> = const {
        RefCell::new(Free {
            blocks: [const { Vec::new() }; CLASSES],
        })
    };
}

/// The size class of a block for `size` bytes, `None` past the largest.
fn class_of(size: usize) -> Option<usize> {
    let shift = size
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_SHIFT);
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

fn class_layout(class: usize) -> Layout {
    // Sizes and alignment are powers of two far below `isize::MAX`: always a valid layout.
    Layout::from_size_align(1 << (class as u32 + MIN_SHIFT), ALIGN).unwrap_or(Layout::new::<u8>())
}

/// The layout `F` is allocated with: its size class's, or its own rounded up to [`ALIGN`]
/// when it has none.
fn layout_for<F>() -> Layout {
    match class_of(std::mem::size_of::<F>()) {
        Some(class) => class_layout(class),
        None => Layout::new::<F>()
            .align_to(ALIGN)
            .unwrap_or(Layout::new::<F>()),
    }
}

/// A value in a pooled block, owned as a `Box` owns its value (see the top); a future in one is
/// a future, pinned where it is.
pub(crate) struct Pooled<F> {
    ptr: NonNull<F>,
}

// SAFETY: `Pooled<F>` owns its `F` as a `Box<F>` would.
unsafe impl<F: Send> Send for Pooled<F> {}
// SAFETY: as `Box<F>`: shared access to it is shared access to `F`.
unsafe impl<F: Sync> Sync for Pooled<F> {}

impl<F> std::ops::Deref for Pooled<F> {
    type Target = F;

    fn deref(&self) -> &F {
        // SAFETY: the block holds a live `F` until `Pooled` drops it.
        unsafe { self.ptr.as_ref() }
    }
}

/// `make()`'s value (a future, most often), written straight into a pooled block (a future
/// built on the stack and then moved is a copy of all its size).
#[inline(always)]
pub(crate) fn in_pool<F>(make: impl FnOnce() -> F) -> Pooled<F> {
    const { assert!(std::mem::align_of::<F>() <= ALIGN) };
    let layout = layout_for::<F>();
    let reused = class_of(std::mem::size_of::<F>()).and_then(|class| {
        FREE.try_with(|free| free.try_borrow_mut().ok()?.blocks[class].pop())
            .ok()
            .flatten()
    });
    let block = reused.unwrap_or_else(|| {
        // SAFETY: the layout's size is at least 256 bytes (never zero).
        let raw = unsafe { std::alloc::alloc(layout) };
        NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    });
    let ptr = block.cast::<F>();
    // SAFETY: the block is at least `size_of::<F>()` bytes, aligned for `F`, and unused.
    unsafe { ptr.as_ptr().write(make()) };
    Pooled { ptr }
}

impl<F: Future> Future for Pooled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in its block until `Pooled` drops it, and never moves.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Pooled<F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live `F`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        let block = self.ptr.cast::<u8>();
        let layout = layout_for::<F>();
        let kept = class_of(std::mem::size_of::<F>()).is_some_and(|class| {
            FREE.try_with(|free| {
                let Ok(mut free) = free.try_borrow_mut() else {
                    return false;
                };
                let blocks = &mut free.blocks[class];
                let room = blocks.len() < KEEP;
                if room {
                    blocks.push(block);
                }
                room
            })
            .unwrap_or(false)
        });
        if !kept {
            // SAFETY: allocated with this layout in `in_pool`.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_finished_future_gives_its_block_back_and_the_next_takes_it() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let held = Counted(dropped.clone());
        let big = [7u8; 3000];
        let first = in_pool(|| async move {
            let _held = held;
            big.iter().map(|&b| usize::from(b)).sum::<usize>()
        });
        let at = first.ptr.as_ptr().cast::<u8>();
        assert_eq!(first.await, 21_000);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "its state was dropped once"
        );
        let second = in_pool(|| async move { big.len() });
        assert_eq!(
            second.ptr.as_ptr().cast::<u8>(),
            at,
            "the same block, from the pool"
        );
        assert_eq!(second.await, 3000);
        // A future dropped before it finished drops what it holds too.
        let held = Counted(dropped.clone());
        let never = in_pool(|| async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(never);
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        // Any value: read through it, dropped with it.
        let value = in_pool(|| (Counted(dropped.clone()), 5u32));
        assert_eq!(value.1, 5);
        drop(value);
        assert_eq!(dropped.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn sizes_map_to_classes() {
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_of(256), Some(0));
        assert_eq!(class_of(257), Some(1));
        assert_eq!(class_of(5000), Some(5));
        assert_eq!(class_of(1 << 15), Some(CLASSES - 1));
        assert_eq!(class_of((1 << 15) + 1), None);
        let huge = layout_for::<[u8; 40_000]>();
        assert!(huge.size() >= 40_000 && huge.align() == ALIGN);
    }
}
