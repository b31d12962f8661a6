//! The sending half of a byte stream between peers, as services pass it around.
//!
//! [`ChunkWrite`] is an [`AsyncWrite`] that can also take an owned [`Bytes`] chunk. A QUIC
//! stream keeps such a chunk as it is until the peer acknowledges it, where `poll_write` would
//! copy it into a buffer of the stream's own first: a holder serving a file sends each block
//! it read this way, with no copy between its read buffer and encryption. Every other stream
//! takes the chunk through `AsyncWrite` (the default).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A future writing a chunk.
pub type WriteChunk<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>>;

/// An [`AsyncWrite`] that can take owned chunks (see the [module docs](self)).
pub trait ChunkWrite: AsyncWrite + Send + Unpin {
    /// Writes all of `chunk`; by default through [`AsyncWriteExt::write_all`].
    fn write_chunk(&mut self, chunk: Bytes) -> WriteChunk<'_> {
        Box::pin(async move { self.write_all(&chunk).await })
    }

    /// Writes all of `chunks`, in order; by default one [`Self::write_chunk`] each. A stream
    /// that can take several at once (QUIC) does, in one step.
    fn write_chunks(&mut self, chunks: Vec<Bytes>) -> WriteChunk<'_> {
        Box::pin(async move {
            for chunk in chunks {
                self.write_chunk(chunk).await?;
            }
            Ok(())
        })
    }
}

/// A stream's sending half, boxed.
pub type BoxChunkWrite = Box<dyn ChunkWrite>;

impl<T: ChunkWrite + ?Sized> ChunkWrite for Box<T> {
    fn write_chunk(&mut self, chunk: Bytes) -> WriteChunk<'_> {
        (**self).write_chunk(chunk)
    }

    fn write_chunks(&mut self, chunks: Vec<Bytes>) -> WriteChunk<'_> {
        (**self).write_chunks(chunks)
    }
}

impl<T: AsyncWrite + Send> ChunkWrite for tokio::io::WriteHalf<T> {}
impl ChunkWrite for tokio::net::tcp::OwnedWriteHalf {}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn a_chunk_written_through_the_default_arrives_whole() {
        let (a, mut b) = tokio::io::duplex(16);
        let (_r, w) = tokio::io::split(a);
        let mut w: BoxChunkWrite = Box::new(w);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let sent = Bytes::from(data.clone());
        let writer = async move {
            w.write_chunk(sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, read) = tokio::join!(writer, b.read_to_end(&mut got));
        read.unwrap();
        assert_eq!(got, data);
    }
}
