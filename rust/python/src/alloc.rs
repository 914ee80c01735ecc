//! The extension's global allocator: the system allocator, except that while native work is
//! being cancelled (Ctrl-C), large blocks are freed on a background thread.
//!
//! Why: an interrupted n-gram build unwinds through gigabytes of tables, and returning them to
//! the kernel (unmapping every page) took ~0.45 s on a 97 MB corpus — longer than the 0.2 s in
//! which `KeyboardInterrupt` must reach the caller. Deferring those frees to a thread lets the
//! call return at once; the memory comes back a moment later. Outside cancellation nothing
//! changes, and small blocks are always freed in place.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

/// Blocks this large go to the reaper during cancellation (below it, unmapping is cheap).
const LARGE: usize = 8 << 20;

pub struct Allocator;

/// A block to free: the pointer and layout `System` allocated it with.
struct Block(*mut u8, Layout);

// SAFETY: the block is owned by nobody else once handed over; `System` may free it from any
// thread.
unsafe impl Send for Block {}

/// The reaper's queue, started on first use; `None` if its thread could not be spawned.
fn reaper() -> Option<&'static Sender<Block>> {
    static QUEUE: OnceLock<Option<Sender<Block>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (send, receive) = channel::<Block>();
            std::thread::Builder::new()
                .name("kexue-reaper".into())
                .spawn(move || {
                    for Block(ptr, layout) in receive {
                        // SAFETY: allocated by `System` with `layout`, handed over exactly once.
                        unsafe { System.dealloc(ptr, layout) }
                    }
                })
                .ok()
                .map(|_| send)
        })
        .as_ref()
}

// SAFETY: every block comes from `System` and goes back to it exactly once, in place or on the
// reaper thread.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE && kexue_core::cancel::requested() {
            if let Some(queue) = reaper() {
                if queue.send(Block(ptr, layout)).is_ok() {
                    return;
                }
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}
