//! Owning a spawned task: [`AbortOnDrop`] ends the task with its owner's scope.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task that is aborted when this handle is dropped. Whoever holds it owns the task: dropping
/// the owner (a struct field, a future cancelled mid-way) ends the task at its next `.await`, so no task
/// outlives the thing it works for. Awaiting it gives the task's result, like the `JoinHandle` inside.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}
