//! Lock helpers that recover a poisoned lock instead of panicking. The process is crash-only
//! (`crash.rs`): a panic on any thread ends the process at once, so a lock poisoned by that
//! panic is never seen by code that goes on working; recovering the guard keeps the code that
//! still runs until the exit (a shutdown trigger, a flush) from panicking a second time, and
//! spares every caller an `unwrap` that could never mean anything else.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Lock `m`, recovering the guard of a poisoned lock.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-lock `l`, recovering the guard of a poisoned lock.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-lock `l`, recovering the guard of a poisoned lock.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Wait on `cond`, recovering the guard of a poisoned lock.
pub fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// Wait on `cond` for at most `d`, recovering the guard of a poisoned lock.
pub fn wait_timeout<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    d: Duration,
) -> MutexGuard<'a, T> {
    match cond.wait_timeout(guard, d) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}
