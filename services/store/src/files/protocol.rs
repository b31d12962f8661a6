//! `kith/file/1`: one request per stream. The fetcher asks for a file by id and for ranges of
//! its blocks (and for its outboard if it has none yet); the holder answers with the file's
//! size, the outboard if asked, every requested block it holds, in order, and an end marker.
//!
//! The fetcher checks the outboard against the id and each block against the outboard before
//! storing anything, and stores verified blocks as they arrive (in batches, while the next
//! ones are received), so an interrupted transfer keeps what came and a new fetch asks only for
//! what is missing. Anything wrong — a block that does not verify, an outboard that does not
//! lead to the id, a block not asked for or out of order, a malformed or oversized frame — ends
//! the session with [`StoreError::Protocol`] and is logged; what was verified before it is kept,
//! nothing of the bad part is stored.
//!
//! Frames: kind (u8) ‖ payload length (u32 LE) ‖ payload, each kind with its own size bound:
//!
//! | kind | payload |
//! |---|---|
//! | 1 request | file id (32) ‖ flags (u8, bit 0: send the outboard) ‖ n (u16 LE, ≤ 256) ‖ n × block range (start, end: u64 LE) |
//! | 2 header | ciphertext size (u64 LE) |
//! | 3 not found | — |
//! | 4 outboard | 1 to 32768 chaining values (32 bytes each), in block order |
//! | 5 block | index (u64 LE) ‖ ciphertext (its exact length) |
//! | 6 end | — |
//! | 7 error | UTF-8 text, at most 1 KiB |

use std::ops::Range;
use std::time::Duration;

use blake3::hazmat::ChainingValue;
use bytes::{Bytes, BytesMut};
use kith_service::stream::ChunkWrite;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::blobs::{BlockReader, block_buf, pooled_bytes, recycle};
use super::hash::{block_count, block_cv, block_len};
use super::store::{BATCH_BLOCKS, BlockSource, FileInfo, PartWrites};
use super::{BLOCK_BYTES, FileId, MAX_FILE_BYTES};
use crate::Store;
use crate::error::StoreError;
use crate::log::RangeSet;
use crate::net::{Network, PeerChannel, PeerId};

/// The protocol's ALPN.
pub const ALPN: &str = "kith/file/1";

/// Block ranges per request.
pub const MAX_REQUEST_RANGES: usize = 256;
/// Chaining values per outboard frame (1 MiB).
const CVS_PER_FRAME: usize = 32 * 1024;
/// How long either side waits for the peer's next frame.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

const REQUEST: u8 = 1;
const HEADER: u8 = 2;
const NOT_FOUND: u8 = 3;
const OUTBOARD: u8 = 4;
const BLOCK: u8 = 5;
const END: u8 = 6;
const ERROR: u8 = 7;

/// The largest payload a frame of `kind` may have.
fn max_payload(kind: u8) -> Option<usize> {
    Some(match kind {
        REQUEST => 32 + 1 + 2 + MAX_REQUEST_RANGES * 16,
        HEADER => 8,
        NOT_FOUND | END => 0,
        OUTBOARD => CVS_PER_FRAME * 32,
        BLOCK => 8 + BLOCK_BYTES as usize,
        ERROR => 1024,
        _ => return None,
    })
}

fn protocol(why: impl Into<String>) -> StoreError {
    StoreError::Protocol(why.into())
}

fn io_error(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Network(format!("{what}: {e}"))
}

/// Frames up to this size are sent as one write; larger ones (outboard frames) as their head
/// and then their payload, which is not copied into a frame buffer first.
const COALESCE_BYTES: usize = 4096;

/// A frame's head: its kind and its payload's length.
fn frame_head(kind: u8, len: usize) -> [u8; 5] {
    let mut head = [kind; 5];
    head[1..].copy_from_slice(&(len as u32).to_le_bytes());
    head
}

/// Sends a frame of kind `kind` carrying `payload` (blocks go by [`send_block`]).
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> Result<(), StoreError> {
    let head = frame_head(kind, payload.len());
    let sent = async {
        if payload.len() <= COALESCE_BYTES {
            return w.write_all(&[&head[..], payload].concat()).await;
        }
        w.write_all(&head).await?;
        w.write_all(payload).await
    };
    sent.await.map_err(|e| io_error("send to peer", e))
}

/// Sends block `index`: the frame's head and the index, then the block's buffer as it is,
/// handed to the stream together (a QUIC stream takes both in one step and keeps the buffer,
/// with no copy, until the peer has it; then it goes back to the pool).
async fn send_block<W: ChunkWrite + ?Sized>(
    w: &mut W,
    index: u64,
    data: BytesMut,
) -> Result<(), StoreError> {
    let mut head = [0u8; 13];
    head[..5].copy_from_slice(&frame_head(BLOCK, 8 + data.len()));
    head[5..].copy_from_slice(&index.to_le_bytes());
    let sent = w.write_chunks(vec![Bytes::copy_from_slice(&head), pooled_bytes(data)]);
    sent.await.map_err(|e| io_error("send to peer", e))
}

/// Blocks a fetcher writes at a time (1 MiB) as a batch arrives.
const PART_BLOCKS: usize = 16;

/// A received frame. A block frame's index is parsed off, so its payload is the block's bytes
/// alone, read straight into a buffer of their size (aligned, so the data file takes it with
/// direct I/O).
struct Frame {
    kind: u8,
    /// A block frame's index (0 for other kinds).
    index: u64,
    payload: BytesMut,
}

/// Reads one frame (`None` at a clean end of stream before a frame), refusing unknown kinds and
/// oversized payloads before reading them. The whole frame must come within [`IDLE_TIMEOUT`].
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, StoreError> {
    tokio::time::timeout(IDLE_TIMEOUT, read_frame_untimed(r))
        .await
        .map_err(|_| StoreError::Network("peer went silent".into()))?
}

async fn read_frame_untimed<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, StoreError> {
    let received = |e| io_error("receive from peer", e);
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await.map_err(received)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(StoreError::Network("stream ended inside a frame".into()))
            };
        }
        got += n;
    }
    let kind = head[0];
    let mut len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    let max = max_payload(kind).ok_or_else(|| protocol(format!("unknown frame kind {kind}")))?;
    if len > max {
        return Err(protocol(format!(
            "frame of kind {kind} with {len} bytes (at most {max})"
        )));
    }
    let mut index = 0;
    if kind == BLOCK {
        if len <= 8 {
            return Err(protocol(format!("block frame of {len} bytes")));
        }
        let mut at = [0u8; 8];
        r.read_exact(&mut at).await.map_err(received)?;
        index = u64::from_le_bytes(at);
        len -= 8;
    }
    // Read into a buffer of the payload's size that is not zeroed first.
    let mut payload = if kind == BLOCK {
        block_buf(len)
    } else {
        BytesMut::with_capacity(len)
    };
    while payload.len() < len {
        let want = (len - payload.len()) as u64;
        let n = (&mut *r)
            .take(want)
            .read_buf(&mut payload)
            .await
            .map_err(received)?;
        if n == 0 {
            return Err(StoreError::Network("stream ended inside a frame".into()));
        }
    }
    Ok(Some(Frame {
        kind,
        index,
        payload,
    }))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A fetcher's request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    id: FileId,
    outboard: bool,
    ranges: Vec<(u64, u64)>,
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(35 + 16 * self.ranges.len());
        b.extend_from_slice(&self.id.0);
        b.push(u8::from(self.outboard));
        b.extend_from_slice(&(self.ranges.len() as u16).to_le_bytes());
        for (s, e) in &self.ranges {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() < 35 {
            return Err(protocol("short request"));
        }
        let id = FileId(b[..32].try_into().expect("32 bytes"));
        let flags = b[32];
        if flags > 1 {
            return Err(protocol("unknown request flags"));
        }
        let n = u16::from_le_bytes([b[33], b[34]]) as usize;
        if n > MAX_REQUEST_RANGES || b.len() != 35 + 16 * n {
            return Err(protocol("request ranges do not match their count"));
        }
        let mut ranges = Vec::with_capacity(n);
        let mut last_end = 0;
        for k in 0..n {
            let (s, e) = (u64_at(b, 35 + 16 * k), u64_at(b, 43 + 16 * k));
            if s >= e || (k > 0 && s < last_end) {
                return Err(protocol(
                    "request ranges are not sorted, disjoint and non-empty",
                ));
            }
            last_end = e;
            ranges.push((s, e));
        }
        Ok(Request {
            id,
            outboard: flags == 1,
            ranges,
        })
    }
}

/// What serving one request did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServeReport {
    /// Whether the file was held here at all.
    pub found: bool,
    pub blocks_sent: u64,
    pub bytes_sent: u64,
}

/// Serves one `kith/file/1` stream a peer opened: reads its request and sends what is held.
/// Blocks are read in batches and sent as stored (each was verified before it was stored; the
/// fetcher verifies each again before keeping it, so a damaged copy is refused there). A data
/// file that is missing or short is [`StoreError::Corrupt`] (and an error frame to the peer). A
/// malformed request is [`StoreError::Protocol`].
pub async fn serve(store: &Store, channel: PeerChannel) -> Result<ServeReport, StoreError> {
    let PeerChannel {
        peer,
        mut send,
        mut recv,
    } = channel;
    let result = serve_request(store, &mut send, &mut recv).await;
    if let Err(error) = &result {
        tracing::warn!(peer = %hex::encode(peer), %error, "file request failed");
        if matches!(error, StoreError::Protocol(_) | StoreError::Corrupt(_)) {
            let text = error.to_string();
            let text = &text.as_bytes()[..text.len().min(1024)];
            let _ = write_frame(&mut send, ERROR, text).await;
        }
    }
    let _ = send.shutdown().await;
    result
}

async fn serve_request<W: ChunkWrite, R: AsyncRead + Unpin>(
    store: &Store,
    send: &mut W,
    recv: &mut R,
) -> Result<ServeReport, StoreError> {
    let Frame { kind, payload, .. } = read_frame(recv)
        .await?
        .ok_or_else(|| protocol("stream ended before a request"))?;
    if kind != REQUEST {
        return Err(protocol(format!(
            "expected a request, got frame kind {kind}"
        )));
    }
    let request = Request::decode(&payload)?;
    let id = request.id;
    let Some(file) = store.file_row(&id).await? else {
        write_frame(send, NOT_FOUND, &[]).await?;
        return Ok(ServeReport::default());
    };
    let count = block_count(file.size);
    write_frame(send, HEADER, &file.size.to_le_bytes()).await?;
    let mut report = ServeReport {
        found: true,
        ..ServeReport::default()
    };
    // Looking up the next batch's rows overlaps with sending this one (and the first lookup,
    // with sending the outboard). Each block in the data file is read just before it goes
    // (from the page cache without blocking, see `BlockReader::read`), so QUIC copies it into
    // packets while it is hot in the CPU's cache; the data file is opened by the first lookup
    // that needs it.
    let (batches, mut batch_rx) =
        tokio::sync::mpsc::channel::<(Vec<(u64, BlockSource)>, Option<BlockReader>)>(2);
    // Each lookup takes the next held blocks of a range, however sparse: what is not held
    // here is skipped (the fetcher asks someone else).
    let read = async move {
        let mut opened = false;
        for (s, e) in request.ranges {
            let (mut at, e) = (s.min(count), e.min(count));
            while at < e {
                let rows = store.block_sources(file, at..e, BATCH_BLOCKS).await?;
                let Some(&(last, _)) = rows.last() else {
                    break;
                };
                let mut reader = None;
                if !opened
                    && rows
                        .iter()
                        .any(|(_, source)| matches!(source, BlockSource::DataFile(_)))
                {
                    reader = Some(store.block_reader(file.row).await?);
                    opened = true;
                }
                if batches.send((rows, reader)).await.is_err() {
                    return Ok(());
                }
                at = last + 1;
            }
        }
        Ok::<_, StoreError>(())
    };
    let write = async {
        if request.outboard {
            // Checked against the id before it goes.
            let cvs = store.file_outboard(&id, file).await?;
            for frame in cvs.chunks(CVS_PER_FRAME) {
                write_frame(send, OUTBOARD, &frame.concat()).await?;
            }
        }
        let mut reader = None;
        while let Some((rows, opened)) = batch_rx.recv().await {
            reader = reader.or(opened);
            for (idx, source) in rows {
                let data = match (source, &reader) {
                    (BlockSource::Row(data), _) => data,
                    (BlockSource::DataFile(len), Some(reader)) => reader.read(idx, len).await?,
                    (BlockSource::DataFile(_), None) => {
                        return Err(StoreError::Io(
                            "a block in the data file came before it was opened".into(),
                        ));
                    }
                };
                report.blocks_sent += 1;
                report.bytes_sent += data.len() as u64;
                send_block(send, idx, data).await?;
            }
        }
        Ok::<_, StoreError>(())
    };
    let (read, written) = tokio::join!(read, write);
    read?;
    written?;
    write_frame(send, END, &[]).await?;
    Ok(report)
}

/// Where a fetch stands, after each batch of verified blocks is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FetchProgress {
    /// The file's ciphertext size.
    pub file_size: u64,
    /// Ciphertext bytes in the asked range.
    pub total: u64,
    /// Of those, bytes held now (before this fetch, or received and verified by it).
    pub held: u64,
    /// Bytes received and verified by this fetch.
    pub received: u64,
}

/// What a fetch did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FetchReport {
    /// The file as held afterwards.
    pub info: FileInfo,
    pub blocks_received: u64,
    pub bytes_received: u64,
    /// Blocks of the asked range still missing (the peer did not have them, or there were more
    /// than [`MAX_REQUEST_RANGES`] gaps): fetch again, from this peer or another.
    pub missing: RangeSet,
}

impl FetchReport {
    /// Whether every block of the asked range is held now.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Fetches blocks `blocks` (block indices, clamped to the file; `0..u64::MAX` for all of it;
/// for a plaintext range, [`super::Ticket::blocks_for`]) of file `id` from `peer` into `store`,
/// asking only for the blocks not held yet. Each block is verified before it is stored, and
/// stored as the transfer goes, so an interrupted fetch is resumed by fetching again.
/// `progress` is called after each batch of verified blocks (up to 4 MiB) is stored.
///
/// Errors: [`StoreError::FileNotFound`] if the peer lacks the file, [`StoreError::Protocol`] if
/// it sent bad data (what it sent before that, verified, is kept), [`StoreError::Network`] if
/// the stream broke.
pub async fn fetch(
    store: &Store,
    network: &dyn Network,
    peer: PeerId,
    id: FileId,
    blocks: Range<u64>,
    mut progress: impl FnMut(FetchProgress) + Send,
) -> Result<FetchReport, StoreError> {
    let known = store.file_row(&id).await?;
    let wanted = |count: u64| blocks.start.min(count)..blocks.end.min(count);
    let mut ask = RangeSet::new();
    match known {
        Some(file) => {
            let w = wanted(block_count(file.size));
            let held = store.held_blocks(file.row).await?;
            for (s, e) in held.missing(w.end).iter() {
                ask.insert(s.max(w.start), e);
            }
            if ask.is_empty() {
                return Ok(FetchReport {
                    info: store.file_info(&id).await?,
                    blocks_received: 0,
                    bytes_received: 0,
                    missing: RangeSet::new(),
                });
            }
        }
        None => ask.insert(blocks.start, blocks.end),
    }
    let request = Request {
        id,
        outboard: known.is_none(),
        ranges: ask.iter().take(MAX_REQUEST_RANGES).collect(),
    };
    let channel = network.open(peer, ALPN).await?;
    let PeerChannel {
        peer,
        mut send,
        recv,
    } = channel;
    write_frame(&mut send, REQUEST, &request.encode()).await?;
    send.shutdown()
        .await
        .map_err(|e| io_error("send to peer", e))?;
    let mut recv = recv;

    let mut session = Session {
        store,
        id,
        known,
        ask,
        request,
        blocks: blocks.clone(),
        received_blocks: 0,
        received_bytes: 0,
    };
    let result = session.run(&mut recv, &mut progress).await;
    if let Err(error) = &result {
        tracing::warn!(peer = %hex::encode(peer), file = %id, %error, "file fetch failed");
    }
    let missing = result?;
    Ok(FetchReport {
        info: store.file_info(&id).await?,
        blocks_received: session.received_blocks,
        bytes_received: session.received_bytes,
        missing,
    })
}

struct Session<'a> {
    store: &'a Store,
    id: FileId,
    known: Option<super::store::FileRow>,
    /// Every block still wanted (the request may have carried only the first ranges of it).
    ask: RangeSet,
    request: Request,
    /// The asked block range, unclamped.
    blocks: Range<u64>,
    received_blocks: u64,
    received_bytes: u64,
}

impl Session<'_> {
    /// Runs the transfer; the blocks of the asked range still missing at the end.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        recv: &mut R,
        progress: &mut (impl FnMut(FetchProgress) + Send),
    ) -> Result<RangeSet, StoreError> {
        let Frame { kind, payload, .. } = read_frame(recv).await?.ok_or_else(|| {
            StoreError::Network("peer closed the stream without answering".into())
        })?;
        let size = match kind {
            HEADER if payload.len() == 8 => u64_at(&payload, 0),
            NOT_FOUND => return Err(StoreError::FileNotFound { id: self.id }),
            ERROR => return Err(peer_error(&payload)),
            _ => {
                return Err(protocol(format!(
                    "expected a header, got frame kind {kind}"
                )));
            }
        };
        if size == 0 || size > MAX_FILE_BYTES {
            return Err(protocol(format!("file size {size} out of range")));
        }
        let count = block_count(size);
        let (known, cvs) = match self.known {
            Some(file) if file.size != size => {
                return Err(protocol(format!(
                    "peer says the file has {size} bytes, it has {}",
                    file.size
                )));
            }
            Some(file) => (
                Some(file),
                self.store.file_cvs(&self.id, file, 0..count).await?,
            ),
            None => (None, self.read_outboard(recv, count).await?),
        };
        // A new file's row (after its outboard is checked against the id) is added by the
        // writing stage, while the first blocks arrive; nothing is written before it.
        let id = self.id;
        let add_file = async {
            match known {
                Some(file) => Ok(file.row),
                None => self
                    .store
                    .add_file(&id, size, &cvs)
                    .await
                    .map(|file| file.row)
                    .map_err(|e| match e {
                        StoreError::BadProof => {
                            protocol("the outboard does not lead to the file id")
                        }
                        other => other,
                    }),
            }
        };

        // What is asked, clamped to the file; the request's ranges are what may arrive.
        let mut asked = RangeSet::new();
        for (s, e) in self.ask.iter() {
            asked.insert(s.min(count), e.min(count));
        }
        let mut may_arrive = RangeSet::new();
        for &(s, e) in &self.request.ranges {
            may_arrive.insert(s.min(count), e.min(count));
        }
        let w = self.blocks.start.min(count)..self.blocks.end.min(count);
        let total = span_bytes(size, w.start, w.end);
        let to_get: u64 = asked.iter().map(|(s, e)| span_bytes(size, s, e)).sum();
        let mut state = FetchProgress {
            file_size: size,
            total,
            held: total.saturating_sub(to_get),
            received: 0,
        };
        progress(state);

        // A pipeline of batches, each stage on a different batch at once: the receiver checks
        // each block's place and length as it comes off the stream and verifies it against the
        // outboard there and then (hashing 64 KiB just copied, still in the CPU's cache); a
        // batch's bytes are written in parts as they come (so little is left to write when
        // the last block is in), made durable at the batch's end, and then its rows committed.
        // A bad block ends the receiver, and what verified before it still goes through the
        // later stages.
        // Parts of a batch, and whether the part ends it.
        let (verified, verified_rx) = tokio::sync::mpsc::channel::<(Vec<(u64, BytesMut)>, bool)>(4);
        let (written, written_rx) = tokio::sync::mpsc::channel::<(i64, Vec<(u64, BytesMut)>)>(1);
        let store = self.store;
        let stopped = || StoreError::Io("the store stopped taking blocks".into());
        let write = async {
            let (mut verified_rx, written) = (verified_rx, written);
            let row = add_file.await?;
            let (mut parts, mut batch) = (PartWrites::default(), Vec::new());
            while let Some((part, ends)) = verified_rx.recv().await {
                batch.extend(
                    store
                        .write_block_data_part(row, part, &mut parts, ends)
                        .await?,
                );
                if ends {
                    written
                        .send((row, std::mem::take(&mut batch)))
                        .await
                        .map_err(|_| stopped())?;
                }
            }
            // The receiver ends every batch it starts, so nothing is left unsynced.
            debug_assert!(batch.is_empty());
            Ok::<_, StoreError>(())
        };
        let mut stored = RangeSet::new();
        let (mut stored_blocks, mut stored_bytes) = (0u64, 0u64);
        let record = async {
            let mut written_rx = written_rx;
            while let Some((row, batch)) = written_rx.recv().await {
                let bytes: u64 = batch.iter().map(|(_, data)| data.len() as u64).sum();
                let indices: Vec<u64> = batch.iter().map(|(idx, _)| *idx).collect();
                let blocks = batch.len() as u64;
                store.record_blocks(row, &batch).await?;
                recycle(batch.into_iter().map(|(_, data)| data));
                for idx in indices {
                    stored.insert(idx, idx + 1);
                }
                stored_blocks += blocks;
                stored_bytes += bytes;
                state.received += bytes;
                state.held += bytes;
                progress(state);
            }
            Ok::<_, StoreError>(())
        };
        let receive = async {
            // The batch's blocks not sent yet, and all of them.
            let (mut part, mut in_batch) = (Vec::with_capacity(PART_BLOCKS), 0u64);
            let result = async {
                let mut next = 0u64;
                loop {
                    let Frame {
                        kind,
                        index: idx,
                        payload,
                    } = read_frame(recv).await?.ok_or_else(|| {
                        StoreError::Network("stream ended before the transfer did".into())
                    })?;
                    match kind {
                        BLOCK => {
                            if idx < next || !may_arrive.contains(idx) {
                                return Err(protocol(format!(
                                    "block {idx} was not asked for or is out of order"
                                )));
                            }
                            if payload.len() != block_len(size, idx) {
                                return Err(protocol(format!(
                                    "block {idx} has {} bytes, expected {}",
                                    payload.len(),
                                    block_len(size, idx)
                                )));
                            }
                            next = idx + 1;
                            if block_cv(size, idx, &payload) != cvs[idx as usize] {
                                return Err(protocol(format!(
                                    "block {idx} does not match the file's hash"
                                )));
                            }
                            part.push((idx, payload));
                            in_batch += 1;
                            // A full batch ends, unless few blocks are left to come: they join
                            // it, so the transfer does not end with a small batch's write,
                            // sync and commit after this one's.
                            let left = || -> u64 {
                                may_arrive
                                    .iter()
                                    .map(|(s, e)| e.saturating_sub(s.max(next)))
                                    .sum()
                            };
                            let ends = in_batch >= BATCH_BLOCKS && left() > BATCH_BLOCKS / 4;
                            if ends || part.len() >= PART_BLOCKS {
                                let full =
                                    std::mem::replace(&mut part, Vec::with_capacity(PART_BLOCKS));
                                verified.send((full, ends)).await.map_err(|_| stopped())?;
                                if ends {
                                    in_batch = 0;
                                }
                            }
                        }
                        END if payload.is_empty() => return Ok(()),
                        ERROR => return Err(peer_error(&payload)),
                        _ => {
                            return Err(protocol(format!(
                                "unexpected frame kind {kind} of {} bytes",
                                payload.len()
                            )));
                        }
                    }
                }
            }
            .await;
            // The last batch ends here; what verified before an error is still kept.
            if in_batch > 0 {
                let _ = verified.send((part, true)).await;
            }
            drop(verified);
            result
        };
        let (received, written, recorded) = tokio::join!(receive, write, record);
        self.received_blocks += stored_blocks;
        self.received_bytes += stored_bytes;
        // The first stage to fail (counting from the store's end) says why; the ones before it
        // only saw it stop.
        recorded?;
        written?;
        received?;
        let mut missing = RangeSet::new();
        for (s, e) in asked.iter() {
            for i in s..e {
                if !stored.contains(i) {
                    missing.insert(i, i + 1);
                }
            }
        }
        Ok(missing)
    }

    async fn read_outboard<R: AsyncRead + Unpin>(
        &self,
        recv: &mut R,
        count: u64,
    ) -> Result<Vec<ChainingValue>, StoreError> {
        let mut cvs: Vec<ChainingValue> = Vec::new();
        while (cvs.len() as u64) < count {
            let Frame { kind, payload, .. } = read_frame(recv)
                .await?
                .ok_or_else(|| StoreError::Network("stream ended inside the outboard".into()))?;
            match kind {
                OUTBOARD if !payload.is_empty() && payload.len() % 32 == 0 => {
                    if cvs.len() as u64 + (payload.len() / 32) as u64 > count {
                        return Err(protocol("outboard longer than the file"));
                    }
                    cvs.extend(
                        payload
                            .chunks_exact(32)
                            .map(|c| -> ChainingValue { c.try_into().expect("32 bytes") }),
                    );
                }
                ERROR => return Err(peer_error(&payload)),
                _ => {
                    return Err(protocol(format!(
                        "expected the outboard, got frame kind {kind}"
                    )));
                }
            }
        }
        Ok(cvs)
    }
}

/// Ciphertext bytes in blocks `[start, end)` of a file of `size` bytes.
fn span_bytes(size: u64, start: u64, end: u64) -> u64 {
    end.saturating_mul(BLOCK_BYTES).min(size) - start.saturating_mul(BLOCK_BYTES).min(size)
}

fn peer_error(payload: &[u8]) -> StoreError {
    protocol(format!("peer: {}", String::from_utf8_lossy(payload)))
}
