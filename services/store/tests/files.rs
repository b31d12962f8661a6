//! Large files on both backends: encrypt and import, read back (whole and ranges), fetch
//! between stores over `kith/file/1` on an in-memory network — resuming an interrupted transfer,
//! refusing a corrupting or garbage-sending peer — and the store holding only ciphertext.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use common::TestDb;
use kith_service::stream::{BoxChunkWrite, ChunkWrite};
use kith_store::files::crypto::{PLAIN_CHUNK_BYTES, ciphertext_size};
use kith_store::files::{
    self, BLOCK_BYTES, EncryptReader, FileId, FileKey, Ticket, read_plaintext,
};
use kith_store::net::{MemoryNetwork, Network, PeerChannel};
use kith_store::{Store, StoreError};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Plaintext that is easy to recognise and not compressible: a keyed stream.
fn plaintext(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut reader = blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof();
    out.resize(len, 0);
    reader.fill(&mut out);
    out
}

/// Encrypts and imports `plain` as a client does; the ticket.
async fn put(store: &Store, plain: &[u8]) -> Ticket {
    let key = FileKey::generate();
    let mut reader = EncryptReader::new(plain, key.clone());
    let info = store.import_file(&mut reader).await.expect("import");
    assert_eq!(reader.plaintext_len(), plain.len() as u64);
    assert_eq!(info.size, ciphertext_size(plain.len() as u64));
    assert!(info.complete());
    Ticket {
        id: info.id,
        key,
        size: plain.len() as u64,
    }
}

/// Every backend a file may be kept on: SQLite (data files in its default blob dir),
/// PostgreSQL with a blob dir, and PostgreSQL without one (data in the database).
async fn backends() -> Vec<TestDb> {
    vec![
        common::sqlite(),
        common::postgres().await,
        common::postgres_inline().await,
    ]
}

fn plain_of(tickets: &[(Ticket, Vec<u8>)], k: usize) -> Vec<u8> {
    tickets[k].1.clone()
}

async fn get(store: &Store, ticket: &Ticket, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    let n = read_plaintext(store, ticket, range, &mut out)
        .await
        .expect("read plaintext");
    assert_eq!(n, out.len() as u64);
    out
}

fn peer(n: u8) -> [u8; 32] {
    [n; 32]
}

/// What a test server does to its side of each stream before serving it.
type Wrap = Arc<dyn Fn(PeerChannel) -> PeerChannel + Send + Sync>;

/// Serves `kith/file/1` for `store` as `peer` on `net`, every stream through `wrap`.
async fn serve_as(net: &MemoryNetwork, me: u8, store: Arc<Store>, wrap: Wrap) -> MemoryNetwork {
    let node = net.join(peer(me));
    let mut incoming = node.listen(files::ALPN).await.unwrap();
    tokio::spawn(async move {
        while let Some(channel) = incoming.recv().await {
            let store = store.clone();
            let channel = wrap(channel);
            tokio::spawn(async move {
                let _ = files::serve(&store, channel).await;
            });
        }
    });
    node
}

fn honest() -> Wrap {
    Arc::new(|c| c)
}

/// A writer that counts what passes, and after `cut` bytes fails (the stream is killed) or,
/// with `flip`, flips a bit of byte `flip` of the stream.
struct Tap {
    inner: BoxChunkWrite,
    written: Arc<AtomicU64>,
    cut: Option<u64>,
    flip: Option<u64>,
}

/// Chunks go through `poll_write`, so they are counted, cut and flipped like other writes.
impl ChunkWrite for Tap {}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let at = self.written.load(Ordering::Relaxed);
        let mut buf = buf;
        if let Some(cut) = self.cut {
            if at >= cut {
                return Poll::Ready(Err(std::io::Error::other("stream killed")));
            }
            buf = &buf[..buf.len().min((cut - at) as usize)];
        }
        let owned;
        if let Some(flip) = self.flip
            && flip >= at
            && flip < at + buf.len() as u64
        {
            let mut altered = buf.to_vec();
            altered[(flip - at) as usize] ^= 0x10;
            owned = altered;
            buf = &owned;
        }
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn tap(written: Arc<AtomicU64>, cut: Option<u64>, flip: Option<u64>) -> Wrap {
    Arc::new(move |mut c: PeerChannel| {
        c.send = Box::new(Tap {
            inner: c.send,
            written: written.clone(),
            cut,
            flip,
        });
        c
    })
}

/// A second and third database on the same backend as `db`.
async fn more(db: &TestDb) -> (TestDb, TestDb) {
    match db.name {
        "sqlite" => (common::sqlite(), common::sqlite()),
        "postgres" => (common::postgres().await, common::postgres().await),
        _ => (
            common::postgres_inline().await,
            common::postgres_inline().await,
        ),
    }
}

/// Every block a store holds of a file verifies when read.
async fn every_held_block_verifies(store: &Store, id: &FileId) {
    for (s, e) in store.file_held(id).await.unwrap().iter() {
        let mut at = s;
        while at < e {
            let end = (at + 64).min(e);
            store
                .read_file_blocks(id, at..end)
                .await
                .expect("held blocks verify");
            at = end;
        }
    }
}

#[tokio::test]
async fn files_round_trip_at_every_size_boundary() {
    let c = PLAIN_CHUNK_BYTES as usize;
    for db in backends().await {
        let store = db.open().await;
        let mut tickets = Vec::new();
        for (k, len) in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c - 1, (5 << 20) + 3]
            .into_iter()
            .enumerate()
        {
            let plain = plaintext(k as u8, len);
            let ticket = put(&store, &plain).await;
            assert_eq!(
                get(&store, &ticket, 0..u64::MAX).await,
                plain,
                "{} len {len}",
                db.name
            );
            let info = store.file_info(&ticket.id).await.unwrap();
            assert_eq!(info.held_bytes, info.size);
            assert_eq!(
                store
                    .file_held(&ticket.id)
                    .await
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>(),
                vec![(0, info.blocks)]
            );
            // The ticket travels as a string.
            let parsed: Ticket = ticket.to_string().parse().unwrap();
            assert_eq!(parsed, ticket);
            tickets.push((ticket, plain));
        }
        let stats = store.file_stats().await.unwrap();
        assert_eq!(stats.files, 8, "{}", db.name);
        assert_eq!(stats.complete_files, 8);
        let listed = store.list_files().await.unwrap();
        assert_eq!(listed.len(), 8);
        assert_eq!(
            stats.bytes,
            tickets
                .iter()
                .map(|(t, _)| t.ciphertext_size())
                .sum::<u64>()
        );
        // The one-call put, with progress.
        let mut seen = Vec::new();
        let t = files::put_plaintext(&store, &plain_of(&tickets, 7)[..], |n| seen.push(n))
            .await
            .unwrap();
        assert_eq!(seen.last(), Some(&t.size));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(t.id, tickets[7].0.id, "a fresh key: another ciphertext");
        assert_eq!(get(&store, &t, 0..u64::MAX).await, plain_of(&tickets, 7));
        assert!(store.delete_file(&t.id).await.unwrap());
        // Importing the same file again changes nothing.
        let (first, plain) = &tickets[7];
        let mut again = EncryptReader::new(&plain[..], first.key.clone());
        let info = store.import_file(&mut again).await.unwrap();
        assert_eq!(info.id, first.id);
        assert_eq!(store.file_stats().await.unwrap(), stats);
        // Deleting one removes it and only it.
        assert!(store.delete_file(&first.id).await.unwrap());
        assert!(!store.delete_file(&first.id).await.unwrap());
        assert!(matches!(
            store.file_info(&first.id).await,
            Err(StoreError::FileNotFound { .. })
        ));
        assert_eq!(store.file_stats().await.unwrap().files, 7);
        // Reopened, the rest is there.
        store.close().await;
        let store = db.open().await;
        let (t, plain) = &tickets[6];
        assert_eq!(&get(&store, t, 0..u64::MAX).await, plain);
    }
}

#[tokio::test]
async fn ranges_decrypt_exactly_the_bytes_asked() {
    let c = PLAIN_CHUNK_BYTES;
    for db in backends().await {
        let store = db.open().await;
        let plain = plaintext(3, (9 * c + 1234) as usize);
        let ticket = put(&store, &plain).await;
        let len = plain.len() as u64;
        for (s, e) in [
            (0, 1),
            (0, c),
            (c - 1, c + 1),
            (c, 2 * c),
            (5, 5),
            (3 * c + 17, 7 * c - 3),
            (len - 1, len),
            (len - 10, len + 1000),
            (len, len + 5),
            (0, len),
        ] {
            let got = get(&store, &ticket, s..e).await;
            let (s, e) = (s.min(len) as usize, e.min(len) as usize);
            assert_eq!(got, plain[s..e.max(s)], "{} range {s}..{e}", db.name);
        }
        assert_eq!(ticket.blocks_for(3 * c + 17..7 * c - 3), 3..7);
    }
}

#[tokio::test]
async fn fetching_whole_files_and_ranges_between_stores() {
    for db in backends().await {
        let (db_b, db_c) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = Arc::new(db_b.open().await);
        let c = db_c.open().await;
        let plain = plaintext(4, 6 << 20);
        let ticket = put(&a, &plain).await;
        let net = MemoryNetwork::new(peer(0));
        serve_as(&net, 1, a.clone(), honest()).await;
        serve_as(&net, 2, b.clone(), honest()).await;

        // A range first: B holds only the blocks that cover it.
        let want = ticket.blocks_for(100_000..400_000);
        let mut calls = Vec::new();
        let report = files::fetch(&b, &net, peer(1), ticket.id, want.clone(), |p| {
            calls.push(p)
        })
        .await
        .unwrap();
        assert!(report.complete(), "{}", db.name);
        assert_eq!(report.blocks_received, want.end - want.start);
        assert_eq!(
            b.file_held(&ticket.id)
                .await
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            vec![(want.start, want.end)]
        );
        let last = calls.last().unwrap();
        assert_eq!(
            (last.held, last.total, last.received),
            (
                report.bytes_received,
                report.bytes_received,
                report.bytes_received
            )
        );
        assert!(calls.windows(2).all(|w| w[0].held <= w[1].held));
        assert_eq!(
            get(&b, &ticket, 100_000..400_000).await,
            plain[100_000..400_000]
        );
        assert!(matches!(
            read_plaintext(&b, &ticket, 0..u64::MAX, &mut Vec::new()).await,
            Err(StoreError::BlockNotHeld { index: 0 })
        ));

        // A second island, with a gap of more than a lookup's 64 blocks before it.
        let second = ticket.blocks_for(5_000_000..5_100_000);
        assert!(second.start - want.end > 64);
        files::fetch(&b, &net, peer(1), ticket.id, second.clone(), |_| {})
            .await
            .unwrap();
        let islands = vec![(want.start, want.end), (second.start, second.end)];

        // A mirror (C) fetches everything from the partial holder B: it gets what B has.
        let partial = files::fetch(&c, &net, peer(2), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap();
        assert!(!partial.complete());
        assert_eq!(
            partial.info.held_blocks,
            want.end - want.start + second.end - second.start
        );
        assert_eq!(
            c.file_held(&ticket.id)
                .await
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            islands
        );
        // Then the rest from A: only the missing blocks travel.
        let rest = files::fetch(&c, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap();
        assert!(rest.complete() && rest.info.complete());
        assert_eq!(rest.bytes_received + partial.bytes_received, rest.info.size);
        assert_eq!(get(&c, &ticket, 0..u64::MAX).await, plain);
        // Nothing left to fetch: no stream is even opened.
        net.set_offline(peer(1), true);
        let none = files::fetch(&c, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap();
        assert_eq!(none.bytes_received, 0);
        net.set_offline(peer(1), false);

        // A peer without the file says so.
        let other = FileId([7; 32]);
        assert!(matches!(
            files::fetch(&c, &net, peer(1), other, 0..u64::MAX, |_| {}).await,
            Err(StoreError::FileNotFound { .. })
        ));
        assert!(matches!(
            c.file_info(&other).await,
            Err(StoreError::FileNotFound { .. })
        ));
    }
}

#[tokio::test]
async fn an_interrupted_fetch_resumes_with_only_the_missing_blocks() {
    for db in backends().await {
        let (db_b, _) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = db_b.open().await;
        let plain = plaintext(5, 4 << 20);
        let ticket = put(&a, &plain).await;
        let size = ticket.ciphertext_size();
        let net = MemoryNetwork::new(peer(0));
        let first = Arc::new(AtomicU64::new(0));
        // Killed mid-transfer, inside a block (not on a frame boundary).
        let cut = size / 2 + 777;
        serve_as(&net, 1, a.clone(), tap(first.clone(), Some(cut), None)).await;
        let err = files::fetch(&b, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Network(_)),
            "{}: {err:?}",
            db.name
        );
        let held = b.file_info(&ticket.id).await.unwrap();
        // Everything that arrived before the cut was kept: every whole block frame after the
        // header (13 bytes) and the outboard frame (5 + 32 per block).
        let before_blocks = 13 + 5 + 32 * held.blocks;
        assert_eq!(
            held.held_blocks,
            (cut - before_blocks) / (BLOCK_BYTES + 13),
            "{held:?}"
        );
        assert!(!held.complete());
        every_held_block_verifies(&b, &ticket.id).await;

        let second = Arc::new(AtomicU64::new(0));
        serve_as(&net, 2, a.clone(), tap(second.clone(), None, None)).await;
        let report = files::fetch(&b, &net, peer(2), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap();
        assert!(report.complete());
        assert_eq!(report.bytes_received, size - held.held_bytes);
        // Re-sent: the missing blocks and their frame headers (13 bytes each), the header and
        // end frames; no outboard, nothing held twice.
        let resent = second.load(Ordering::Relaxed);
        let blocks = report.blocks_received;
        assert_eq!(
            resent,
            size - held.held_bytes + 13 * blocks + 13 + 5,
            "{}",
            db.name
        );
        assert_eq!(get(&b, &ticket, 0..u64::MAX).await, plain);
    }
}

#[tokio::test]
async fn a_fetch_killed_at_any_point_resumes_and_completes() {
    for db in backends().await {
        let (db_b, _) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = db_b.open().await;
        let plain = plaintext(12, 300_000);
        let ticket = put(&a, &plain).await;
        let size = ticket.ciphertext_size();
        let blocks = size.div_ceil(BLOCK_BYTES);
        let net = MemoryNetwork::new(peer(0));
        serve_as(&net, 1, a.clone(), honest()).await;
        let outboard_end = 13 + 5 + 32 * blocks;
        // Inside the header, inside the outboard, just after it, inside the first block, on a
        // frame boundary, and in the last frame.
        let cuts = [
            3,
            13 + 5 + 10,
            outboard_end,
            outboard_end + 100,
            outboard_end + BLOCK_BYTES + 13,
            outboard_end + size + 13 * blocks - 2,
        ];
        for (k, cut) in cuts.into_iter().enumerate() {
            let me = 20 + k as u8;
            serve_as(&net, me, a.clone(), tap(Arc::default(), Some(cut), None)).await;
            let err = files::fetch(&b, &net, peer(me), ticket.id, 0..u64::MAX, |_| {})
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Network(_)),
                "{} cut {cut}: {err:?}",
                db.name
            );
            if let Ok(info) = b.file_info(&ticket.id).await {
                every_held_block_verifies(&b, &ticket.id).await;
                assert!(!info.complete(), "cut {cut}");
            } else {
                assert!(cut < outboard_end, "the outboard was whole at {cut}");
            }
            let report = files::fetch(&b, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
                .await
                .unwrap();
            assert!(report.complete(), "cut {cut}");
            assert_eq!(get(&b, &ticket, 0..u64::MAX).await, plain, "cut {cut}");
            assert!(b.delete_file(&ticket.id).await.unwrap());
        }
    }
}

#[tokio::test]
async fn a_failed_import_keeps_nothing() {
    /// Yields `ok` bytes, then fails.
    struct Failing {
        left: usize,
    }
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.left == 0 {
                return Poll::Ready(Err(std::io::Error::other("disk unplugged")));
            }
            let n = self.left.min(buf.remaining()).min(10_000);
            buf.put_slice(&vec![1; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }
    for db in backends().await {
        let store = db.open().await;
        let kept = put(&store, &plaintext(13, 100_000)).await;
        let before = store.file_stats().await.unwrap();
        let err = store
            .import_file(EncryptReader::new(
                Failing { left: 5 << 20 },
                FileKey::generate(),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Io(why) if why.contains("disk unplugged")),
            "{err:?}"
        );
        assert!(
            store.import_file(&[][..]).await.is_err(),
            "an empty stream is no file"
        );
        assert_eq!(store.file_stats().await.unwrap(), before, "{}", db.name);
        assert_eq!(store.list_files().await.unwrap().len(), 1);
        assert_eq!(store.file_info(&kept.id).await.unwrap().held_blocks, 2);
        if store.blob_dir().is_some() {
            // The failed import's data file (it wrote 5 MiB before failing) is gone.
            assert_eq!(data_files(&store).len(), 1, "{}", db.name);
        }
        // No block rows are left behind under a provisional file either.
        let store_url = db.url.clone();
        store.close().await;
        let rows: i64 = if store_url.starts_with("sqlite") {
            let pool = sqlx::SqlitePool::connect(&store_url).await.unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM file_blocks")
                .fetch_one(&pool)
                .await
                .unwrap()
        } else {
            let pool = sqlx::PgPool::connect(&store_url).await.unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM file_blocks")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        assert_eq!(rows, 2);
    }
}

#[tokio::test]
async fn a_corrupting_peer_is_refused_and_an_honest_one_then_serves() {
    for db in backends().await {
        let (db_b, _) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = db_b.open().await;
        let plain = plaintext(6, 2 << 20);
        let ticket = put(&a, &plain).await;
        let net = MemoryNetwork::new(peer(0));
        // A bit flipped in the middle of the stream: inside some block's ciphertext.
        let flip = ticket.ciphertext_size() / 2;
        serve_as(&net, 1, a.clone(), tap(Arc::default(), None, Some(flip))).await;
        serve_as(&net, 2, a.clone(), honest()).await;
        let err = files::fetch(&b, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap_err();
        let StoreError::Protocol(why) = &err else {
            panic!("{}: {err:?}", db.name)
        };
        assert!(why.contains("does not match the file's hash"), "{why}");
        // What came before the bad block is kept and verifies; the bad block is not held.
        let held = b.file_held(&ticket.id).await.unwrap();
        let bad_block = held.iter().next().map_or(0, |(_, e)| e);
        assert!(bad_block > 0 && bad_block < ticket.ciphertext_size() / BLOCK_BYTES);
        assert_eq!(held.iter().count(), 1);
        every_held_block_verifies(&b, &ticket.id).await;

        let report = files::fetch(&b, &net, peer(2), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap();
        assert!(report.complete());
        assert_eq!(get(&b, &ticket, 0..u64::MAX).await, plain);
    }
}

/// A fake peer that answers any `kith/file/1` stream with `reply` and closes.
async fn fake_peer(net: &MemoryNetwork, me: u8, reply: Vec<u8>) {
    let node = net.join(peer(me));
    let mut incoming = node.listen(files::ALPN).await.unwrap();
    tokio::spawn(async move {
        while let Some(mut channel) = incoming.recv().await {
            let _ = channel.send.write_all(&reply).await;
            let _ = channel.send.shutdown().await;
            // Keep the stream until the fetcher is done with it.
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut channel.recv, &mut sink).await;
            });
        }
    });
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn garbage_oversized_frames_and_a_wrong_outboard_are_refused() {
    for db in backends().await {
        let (db_b, _) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = db_b.open().await;
        let plain = plaintext(7, 1 << 20);
        let ticket = put(&a, &plain).await;
        let decoy = put(&a, &plaintext(8, 1 << 20)).await;
        let net = MemoryNetwork::new(peer(0));
        let size = ticket.ciphertext_size();

        let random = plaintext(9, 4096);
        fake_peer(&net, 1, random).await;
        let oversized = frame(2, &[])
            .into_iter()
            .take(1)
            .chain(u32::MAX.to_le_bytes())
            .collect();
        fake_peer(&net, 2, oversized).await;
        // Another file's real outboard (same size) offered under the ticket's id.
        let mut wrong = frame(2, &size.to_le_bytes());
        let mut cvs = Vec::new();
        for i in 0..size.div_ceil(BLOCK_BYTES) {
            let block = a
                .read_file_blocks(&decoy.id, i..i + 1)
                .await
                .unwrap()
                .remove(0);
            cvs.extend_from_slice(&files::hash::block_cv(size, i, &block));
        }
        wrong.extend(frame(4, &cvs));
        fake_peer(&net, 3, wrong).await;
        let unknown_kind = frame(42, b"hello");
        fake_peer(&net, 4, unknown_kind).await;
        let short_outboard = [frame(2, &size.to_le_bytes()), frame(4, &[1; 31])].concat();
        fake_peer(&net, 5, short_outboard).await;

        for (p, expect) in [
            (1u8, "frame"),
            (2, "bytes (at most"),
            (3, "outboard does not lead to the file id"),
            (4, "unknown frame kind 42"),
            (5, "expected the outboard"),
        ] {
            let err = files::fetch(&b, &net, peer(p), ticket.id, 0..u64::MAX, |_| {})
                .await
                .unwrap_err();
            let StoreError::Protocol(why) = &err else {
                panic!("{} peer {p}: {err:?}", db.name)
            };
            assert!(why.contains(expect), "peer {p}: {why}");
            // Nothing from a bad peer was stored: not even the file's row.
            assert!(
                matches!(
                    b.file_info(&ticket.id).await,
                    Err(StoreError::FileNotFound { .. })
                ),
                "peer {p}"
            );
        }
        assert_eq!(b.file_stats().await.unwrap(), Default::default());

        // A malformed request gets a protocol error from serve, and an error frame back.
        let node = net.join(peer(10));
        let mut incoming = node.listen("kith/file/test").await.unwrap();
        let client = net.join(peer(11));
        let mut channel = client.open(peer(10), "kith/file/test").await.unwrap();
        channel.send.write_all(&frame(1, &[0; 34])).await.unwrap();
        channel.send.shutdown().await.unwrap();
        let served = files::serve(&a, incoming.recv().await.unwrap()).await;
        assert!(matches!(served, Err(StoreError::Protocol(_))), "{served:?}");
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut channel.recv, &mut answer)
            .await
            .unwrap();
        assert_eq!(answer[0], 7, "an error frame");
        assert!(String::from_utf8_lossy(&answer[5..]).contains("short request"));
    }
}

#[tokio::test]
async fn copying_sqlite_to_postgres_and_back_keeps_every_file() {
    let sqlite = common::sqlite();
    let pg = common::postgres().await;
    let back = common::sqlite();
    let (a, b, c) = (
        Arc::new(sqlite.open().await),
        pg.open().await,
        back.open().await,
    );
    let whole = plaintext(14, 700_000);
    let ticket = put(&a, &whole).await;
    // A partial copy too: a mirror that holds blocks 2..5 of another file.
    let source = common::sqlite();
    let s = Arc::new(source.open().await);
    let part_plain = plaintext(15, 1 << 20);
    let part = put(&s, &part_plain).await;
    let net = MemoryNetwork::new(peer(0));
    serve_as(&net, 1, s.clone(), honest()).await;
    files::fetch(&a, &net, peer(1), part.id, 2..5, |_| {})
        .await
        .unwrap();

    let report = kith_store::backend::copy_store(&a, &b).await.unwrap();
    assert_eq!((report.files, report.file_blocks), (2, 11 + 3));
    kith_store::backend::copy_store(&b, &c).await.unwrap();
    assert_eq!(a.list_files().await.unwrap(), c.list_files().await.unwrap());
    assert_eq!(a.file_stats().await.unwrap(), c.file_stats().await.unwrap());
    assert_eq!(get(&c, &ticket, 0..u64::MAX).await, whole);
    assert_eq!(
        c.file_held(&part.id)
            .await
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![(2, 5)]
    );
    let range = 2 * PLAIN_CHUNK_BYTES..5 * PLAIN_CHUNK_BYTES;
    assert_eq!(
        get(&c, &part, range.clone()).await,
        part_plain[range.start as usize..range.end as usize]
    );
}

#[tokio::test]
async fn a_wrong_key_or_altered_ciphertext_fails_clearly() {
    for db in backends().await {
        let store = db.open().await;
        let plain = plaintext(10, 500_000);
        let ticket = put(&store, &plain).await;
        let wrong = Ticket {
            key: FileKey::generate(),
            ..ticket.clone()
        };
        let mut out = Vec::new();
        let err = read_plaintext(&store, &wrong, 0..u64::MAX, &mut out)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Decrypt { index: 0 }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot decrypt block 0: wrong key or altered ciphertext"
        );
        assert!(
            out.is_empty(),
            "nothing of a block that does not open is written"
        );
        let mut wrong_size = ticket.clone();
        wrong_size.size += 1;
        assert!(matches!(
            read_plaintext(&store, &wrong_size, 0..u64::MAX, &mut Vec::new()).await,
            Err(StoreError::InvalidTicket(_))
        ));

        // Ciphertext altered in the database: reads and serving refuse it.
        alter_block(&db, 2).await;
        let err = read_plaintext(&store, &ticket, 0..u64::MAX, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("block 2"), "{err}");
        // Blocks before it still read.
        assert_eq!(get(&store, &ticket, 0..1000).await, plain[..1000]);
    }
}

/// Flips a byte of block `idx` of the only file in `db`, in the database (a row holding the
/// block's data, which reads prefer to the data file).
async fn alter_block(db: &TestDb, idx: i64) {
    let url = &db.url;
    let sql = "UPDATE file_blocks SET data = $1 WHERE idx = $2";
    let block = {
        let store = db.open().await;
        let id = store.list_files().await.unwrap()[0].id;
        let mut b = store
            .read_file_blocks(&id, idx as u64..idx as u64 + 1)
            .await
            .unwrap()
            .remove(0);
        store.close().await;
        b[10] ^= 1;
        b
    };
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql)
            .bind(block)
            .bind(idx)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql)
            .bind(block)
            .bind(idx)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

#[tokio::test]
async fn the_store_holds_only_ciphertext() {
    for db in backends().await {
        let store = db.open().await;
        let plain = plaintext(11, 1 << 20);
        let ticket = put(&store, &plain).await;
        // Every stored block, as the database returns it.
        let info = store.file_info(&ticket.id).await.unwrap();
        let mut stored = Vec::new();
        let mut at = 0;
        while at < info.blocks {
            let end = (at + 64).min(info.blocks);
            for b in store.read_file_blocks(&ticket.id, at..end).await.unwrap() {
                stored.extend(b);
            }
            at = end;
        }
        store.close().await;
        assert_eq!(stored.len() as u64, info.size);
        let mut haystacks = vec![stored];
        let mut dirs = Vec::new();
        if db.name == "sqlite" {
            // And the database's own files, WAL included, and its blob dir.
            let path = db.url.trim_start_matches("sqlite://");
            dirs.push(std::path::Path::new(path).parent().unwrap().to_owned());
        }
        if let Some(blobs) = &db.blob_dir {
            dirs.push(blobs.path().to_owned());
        }
        let mut on_disk = 0;
        for dir in dirs {
            for file in files_under(&dir) {
                let bytes = std::fs::read(file).unwrap();
                on_disk += bytes.len();
                haystacks.push(bytes);
            }
        }
        if db.name != "postgres-inline" {
            assert!(on_disk > plain.len(), "{}", db.name);
        }
        for hay in &haystacks {
            for at in (0..plain.len() - 32).step_by(50_000) {
                let needle = &plain[at..at + 32];
                assert!(
                    !hay.windows(32).any(|w| w == needle),
                    "{}: plaintext at {at} found in the store",
                    db.name
                );
            }
            assert!(
                !hay.windows(32).any(|w| w == ticket.key.as_bytes()),
                "the key is stored"
            );
        }
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The data files in a store's blob dir.
fn data_files(store: &Store) -> Vec<std::path::PathBuf> {
    let dir = store.blob_dir().expect("a blob dir");
    let mut out: Vec<_> = files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .collect();
    out.sort();
    out
}

/// The backends that keep file data in a blob dir.
async fn blob_backends() -> Vec<TestDb> {
    vec![common::sqlite(), common::postgres().await]
}

#[tokio::test]
async fn sqlite_keeps_blocks_beside_the_database_and_postgres_only_if_asked() {
    let db = common::sqlite();
    let store = db.open().await;
    let path = db.url.trim_start_matches("sqlite://");
    assert_eq!(
        store.blob_dir().unwrap(),
        std::path::Path::new(&format!("{path}-blobs"))
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(store.blob_dir().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let memory = Store::open("sqlite::memory:").await.unwrap();
    assert!(memory.blob_dir().is_none());
    let pg = common::postgres_inline().await;
    assert!(pg.open().await.blob_dir().is_none());
    assert!(common::postgres().await.open().await.blob_dir().is_some());
}

#[tokio::test]
async fn a_data_file_altered_on_disk_is_corrupt_here_and_refused_by_a_fetcher() {
    use std::os::unix::fs::FileExt;
    for db in blob_backends().await {
        let (db_b, _) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = db_b.open().await;
        let plain = plaintext(20, 1 << 20);
        let ticket = put(&a, &plain).await;
        let data = data_files(&a);
        assert_eq!(data.len(), 1, "{}", db.name);
        assert_eq!(
            std::fs::metadata(&data[0]).unwrap().len(),
            ticket.ciphertext_size()
        );
        // One bit of block 2, on disk.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data[0])
            .unwrap();
        let at = 2 * BLOCK_BYTES + 100;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 4], at).unwrap();
        let err = a.read_file_blocks(&ticket.id, 0..4).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(why) if why.contains("block 2")),
            "{}: {err:?}",
            db.name
        );
        let err = read_plaintext(&a, &ticket, 0..u64::MAX, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(a.read_file_blocks(&ticket.id, 0..2).await.unwrap().len(), 2);
        // Served as stored, the damaged block is refused by the fetcher, which keeps the
        // blocks before it and nothing of it or after it.
        let net = MemoryNetwork::new(peer(0));
        serve_as(&net, 1, a.clone(), honest()).await;
        let err = files::fetch(&b, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Protocol(why) if why.contains("block 2 does not match the file's hash")),
            "{err:?}"
        );
        let held = b.file_held(&ticket.id).await.unwrap();
        assert!(held.contains(0) && held.contains(1), "{held:?}");
        assert!(!held.contains(2) && !held.contains(3), "{held:?}");
        // A data file cut short: the blocks past its end are corrupt too.
        file.write_all_at(&byte, at).unwrap();
        file.set_len(5 * BLOCK_BYTES + 7).unwrap();
        let err = a.read_file_blocks(&ticket.id, 0..16).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(why) if why.contains("block 5")),
            "{err:?}"
        );
        // And a data file gone.
        std::fs::remove_file(&data[0]).unwrap();
        let err = a.read_file_blocks(&ticket.id, 0..1).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }
}

#[tokio::test]
async fn deleting_a_file_removes_its_data_file() {
    for db in blob_backends().await {
        let store = db.open().await;
        let kept = put(&store, &plaintext(21, 300_000)).await;
        let gone = put(&store, &plaintext(22, 500_000)).await;
        let before = data_files(&store);
        assert_eq!(before.len(), 2, "{}", db.name);
        assert!(store.delete_file(&gone.id).await.unwrap());
        let after = data_files(&store);
        assert_eq!(after.len(), 1);
        assert!(before.contains(&after[0]));
        assert_eq!(
            get(&store, &kept, 0..u64::MAX).await,
            plaintext(21, 300_000)
        );
        assert!(store.delete_file(&kept.id).await.unwrap());
        assert!(data_files(&store).is_empty());
    }
}

#[tokio::test]
async fn data_files_whose_row_is_gone_are_removed_when_the_store_opens() {
    for db in blob_backends().await {
        let store = db.open().await;
        let kept = put(&store, &plaintext(24, 300_000)).await;
        let data = data_files(&store);
        assert_eq!(data.len(), 1, "{}", db.name);
        let dir = store.blob_dir().unwrap().to_owned();
        // What a crash between a row's deletion and its data file's left, and files that are
        // not data files of this store (left alone).
        std::fs::copy(&data[0], dir.join("987654.data")).unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        std::fs::write(dir.join("12x.data"), b"not a row").unwrap();
        store.close().await;
        let store = db.open().await;
        let mut expected = data.clone();
        expected.push(dir.join("12x.data"));
        expected.sort();
        assert_eq!(data_files(&store), expected, "{}", db.name);
        assert!(dir.join("notes.txt").exists());
        assert_eq!(
            get(&store, &kept, 0..u64::MAX).await,
            plaintext(24, 300_000)
        );
    }
}

#[tokio::test]
async fn bytes_written_without_their_rows_are_not_held_and_a_refetch_works() {
    use std::os::unix::fs::FileExt;
    for db in blob_backends().await {
        let (db_b, _) = more(&db).await;
        let a = Arc::new(db.open().await);
        let b = db_b.open().await;
        let plain = plaintext(23, 2 << 20);
        let ticket = put(&a, &plain).await;
        let net = MemoryNetwork::new(peer(0));
        serve_as(&net, 1, a.clone(), honest()).await;
        files::fetch(&b, &net, peer(1), ticket.id, 0..3, |_| {})
            .await
            .unwrap();
        let data = data_files(&b);
        assert_eq!(data.len(), 1, "{}", db.name);
        // A crash after the data file was written and synced, before the rows were committed:
        // the right bytes of blocks 3..5, and garbage where block 6 would go.
        let blocks = a.read_file_blocks(&ticket.id, 3..5).await.unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data[0])
            .unwrap();
        for (k, block) in blocks.iter().enumerate() {
            file.write_all_at(block, (3 + k as u64) * BLOCK_BYTES)
                .unwrap();
        }
        file.write_all_at(&[0xAB; 1000], 6 * BLOCK_BYTES).unwrap();
        file.sync_all().unwrap();
        drop(file);
        b.close().await;
        let b = db_b.open().await;
        assert_eq!(
            b.file_held(&ticket.id)
                .await
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            vec![(0, 3)]
        );
        assert!(matches!(
            b.read_file_blocks(&ticket.id, 3..4).await,
            Err(StoreError::BlockNotHeld { index: 3 })
        ));
        let info = b.file_info(&ticket.id).await.unwrap();
        assert_eq!(info.held_bytes, 3 * BLOCK_BYTES);
        // They are fetched again (and overwritten), and everything reads.
        let report = files::fetch(&b, &net, peer(1), ticket.id, 0..u64::MAX, |_| {})
            .await
            .unwrap();
        assert!(report.complete());
        assert_eq!(report.blocks_received, info.blocks - 3);
        assert_eq!(get(&b, &ticket, 0..u64::MAX).await, plain);
        every_held_block_verifies(&b, &ticket.id).await;
    }
}

#[tokio::test]
async fn an_import_left_unfinished_is_removed_once_stale() {
    for db in blob_backends().await {
        let store = Arc::new(db.open().await);
        // An import whose reader stalls after 5 MiB (more than a batch), cancelled as a crash
        // would end it: its provisional row, blocks and data file stay behind.
        let (mut feed, reader) = tokio::io::duplex(1 << 16);
        let feeder = tokio::spawn(async move {
            feed.write_all(&plaintext(9, 5 << 20)).await.unwrap();
            std::future::pending::<()>().await;
        });
        let importing = tokio::spawn({
            let store = store.clone();
            async move { store.import_file(reader).await }
        });
        let began = kith_store::mailbox::unix_now();
        for _ in 0..1000 {
            if !data_files(&store).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        importing.abort();
        assert!(importing.await.unwrap_err().is_cancelled());
        feeder.abort();
        assert_eq!(data_files(&store).len(), 1, "{}", db.name);
        assert_eq!(store.file_stats().await.unwrap().files, 0);

        // Not stale yet: kept, by a sweep and by reopening the store.
        assert_eq!(store.sweep_stale_imports(began).await.unwrap(), 0);
        Arc::try_unwrap(store).ok().unwrap().close().await;
        let store = db.open().await;
        assert_eq!(data_files(&store).len(), 1, "{}", db.name);
        // Stale: removed, rows and data file, and a new import works.
        assert_eq!(store.sweep_stale_imports(began + 2).await.unwrap(), 1);
        assert!(data_files(&store).is_empty(), "{}", db.name);
        assert_eq!(store.sweep_stale_imports(began + 2).await.unwrap(), 0);
        let ticket = put(&store, &plaintext(3, 100_000)).await;
        assert_eq!(
            get(&store, &ticket, 0..u64::MAX).await,
            plaintext(3, 100_000)
        );
        assert_eq!(store.file_stats().await.unwrap().blocks, 2);
    }
}
