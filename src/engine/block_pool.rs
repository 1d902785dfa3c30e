//! The KV block pool: which cache blocks are free, who holds the others, and which full blocks can be
//! reused by a new sequence whose tokens start the same way (prefix caching).
//!
//! Blocks carry a reference count. A block whose count drops to zero goes to the tail of the free queue
//! but keeps its contents and, if it was full, its prefix hash, so a later prompt with the same prefix
//! can take it back; allocation takes from the head of the queue, so the least recently freed cached
//! blocks are evicted first. A block's identity for prefix caching is its tokens together with the
//! identity of the block before it; a lookup compares the tokens and the parent, not only a hash, so a
//! hash collision can never hand one user another user's cache.
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Index of a block in the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Hash of a full block's tokens chained with its parent's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u64);

impl BlockHash {
    pub fn of(parent: Option<BlockHash>, tokens: &[u32]) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        parent.map(|p| p.0).hash(&mut h);
        tokens.hash(&mut h);
        BlockHash(h.finish())
    }
}

/// The identity of a cached full block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedKey {
    hash: BlockHash,
    parent: Option<BlockHash>,
    /// The block this one follows when it was registered: a lookup only continues a chain through
    /// the very blocks it matched, so two prefixes whose hashes collide can never be confused.
    parent_block: Option<BlockId>,
    tokens: Vec<u32>,
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct BlockMeta {
    ref_count: u32,
    cached: Option<CachedKey>,
    /// Free-queue links (valid while `ref_count == 0`).
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// Counters of prefix-cache use, for the engine's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Full blocks looked up.
    pub queries: u64,
    /// Full blocks found.
    pub hits: u64,
}

pub struct BlockPool {
    block_size: usize,
    blocks: Vec<BlockMeta>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
    stats: PrefixCacheStats,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(num_blocks < NIL as usize, "too many blocks");
        let mut pool = Self {
            block_size,
            blocks: vec![
                BlockMeta {
                    ref_count: 0,
                    cached: None,
                    prev: NIL,
                    next: NIL,
                    in_free_queue: false
                };
                num_blocks
            ],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: HashMap::new(),
            stats: PrefixCacheStats::default(),
        };
        for i in 0..num_blocks as u32 {
            pool.push_free(i);
        }
        pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
    /// Blocks that can be allocated (free, including cached ones that would be evicted).
    pub fn num_free(&self) -> usize {
        self.num_free
    }
    /// Fraction of blocks held by live sequences (free cached blocks do not count).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        (self.blocks.len() - self.num_free) as f64 / self.blocks.len() as f64
    }
    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }
    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.blocks[b.0 as usize].ref_count
    }

    fn push_free(&mut self, i: u32) {
        let tail = self.tail;
        let m = &mut self.blocks[i as usize];
        debug_assert!(!m.in_free_queue && m.ref_count == 0);
        m.prev = tail;
        m.next = NIL;
        m.in_free_queue = true;
        if tail == NIL {
            self.head = i;
        } else {
            self.blocks[tail as usize].next = i;
        }
        self.tail = i;
        self.num_free += 1;
    }

    fn unlink_free(&mut self, i: u32) {
        let (prev, next) = {
            let m = &self.blocks[i as usize];
            debug_assert!(m.in_free_queue);
            (m.prev, m.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let m = &mut self.blocks[i as usize];
        m.prev = NIL;
        m.next = NIL;
        m.in_free_queue = false;
        self.num_free -= 1;
    }

    /// Takes `n` blocks (evicting the least recently freed cached ones), or none if fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.head;
            self.unlink_free(i);
            let m = &mut self.blocks[i as usize];
            if let Some(key) = m.cached.take() {
                if self.cached.get(&key.hash) == Some(&BlockId(i)) {
                    self.cached.remove(&key.hash);
                }
            }
            self.blocks[i as usize].ref_count = 1;
            out.push(BlockId(i));
        }
        Some(out)
    }

    /// Drops one reference to each block; blocks no longer held join the free queue. Pass a
    /// sequence's blocks in order: they are queued last block first, so a shared prefix outlives
    /// the tails that hang off it.
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let m = &mut self.blocks[b.0 as usize];
            assert!(m.ref_count > 0, "double free of block {}", b.0);
            m.ref_count -= 1;
            if m.ref_count == 0 {
                self.push_free(b.0);
            }
        }
    }

    /// Adds a reference to each block (a forked sequence sharing them).
    pub fn share(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            let m = &mut self.blocks[b.0 as usize];
            assert!(m.ref_count > 0, "sharing a free block {}", b.0);
            m.ref_count += 1;
        }
    }

    /// Makes the block at `table[idx]` private before it is written: if it is shared, a fresh block
    /// replaces it and `(source, copy)` is returned for the cache to copy. `None` when no block is free.
    pub fn make_writable(
        &mut self,
        table: &mut [BlockId],
        idx: usize,
    ) -> Option<Option<(BlockId, BlockId)>> {
        let b = table[idx];
        if self.blocks[b.0 as usize].ref_count == 1 {
            return Some(None);
        }
        let fresh = self.allocate(1)?[0];
        self.free(&[b]);
        table[idx] = fresh;
        Some(Some((b, fresh)))
    }

    /// Registers `block` (now full with `tokens`, after `parent`) for prefix reuse.
    pub fn register_full(
        &mut self,
        block: BlockId,
        parent: Option<(BlockHash, BlockId)>,
        tokens: &[u32],
    ) -> BlockHash {
        debug_assert_eq!(tokens.len(), self.block_size);
        let hash = BlockHash::of(parent.map(|p| p.0), tokens);
        let key = CachedKey {
            hash,
            parent: parent.map(|p| p.0),
            parent_block: parent.map(|p| p.1),
            tokens: tokens.to_vec(),
        };
        self.blocks[block.0 as usize].cached = Some(key);
        self.cached.entry(hash).or_insert(block);
        hash
    }

    /// The longest run of cached full blocks that starts `tokens`, each now held by the caller (one
    /// reference each), with the hash of the last. Only whole blocks are matched; a scheduler that
    /// needs logits for the prompt's last token passes all but that token.
    /// `count`: whether this lookup counts in the hit-rate statistics (not when admission retries
    /// a request it already looked up).
    pub fn take_cached_prefix(
        &mut self,
        tokens: &[u32],
        count: bool,
    ) -> (Vec<BlockId>, Option<BlockHash>) {
        let mut out: Vec<BlockId> = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_size) {
            if count {
                self.stats.queries += 1;
            }
            let hash = BlockHash::of(parent, chunk);
            let Some(&b) = self.cached.get(&hash) else {
                break;
            };
            let m = &self.blocks[b.0 as usize];
            let parent_block = out.last().copied();
            let same = m.cached.as_ref().is_some_and(|k| {
                k.hash == hash
                    && k.parent == parent
                    && k.parent_block == parent_block
                    && k.tokens == chunk
            });
            if !same {
                break;
            }
            if count {
                self.stats.hits += 1;
            }
            if self.blocks[b.0 as usize].ref_count == 0 {
                self.unlink_free(b.0);
            }
            self.blocks[b.0 as usize].ref_count += 1;
            out.push(b);
            parent = Some(hash);
        }
        (out, parent)
    }

    /// Checks the pool's internal invariants (for tests): the free queue holds exactly the blocks with
    /// no references, each once, and every cache entry points at a block registered under that hash.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![false; self.blocks.len()];
        let mut i = self.head;
        let mut prev = NIL;
        let mut count = 0;
        while i != NIL {
            let m = &self.blocks[i as usize];
            if seen[i as usize] {
                return Err(format!("block {i} twice in the free queue"));
            }
            seen[i as usize] = true;
            if m.ref_count != 0 || !m.in_free_queue || m.prev != prev {
                return Err(format!("free queue entry {i} is inconsistent"));
            }
            count += 1;
            prev = i;
            i = m.next;
        }
        if prev != self.tail || count != self.num_free {
            return Err(format!(
                "free count {} vs queue length {count}",
                self.num_free
            ));
        }
        for (b, m) in self.blocks.iter().enumerate() {
            if (m.ref_count == 0) != seen[b] {
                return Err(format!(
                    "block {b}: ref count {} but in queue {}",
                    m.ref_count, seen[b]
                ));
            }
        }
        for (h, b) in &self.cached {
            if self.blocks[b.0 as usize].cached.as_ref().map(|k| k.hash) != Some(*h) {
                return Err(format!("cache entry for block {} is stale", b.0));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    /// A sequence as the scheduler would hold it: tokens and blocks.
    struct Seq {
        tokens: Vec<u32>,
        table: Vec<BlockId>,
        /// Hash of the last registered full block and how many blocks are registered.
        last_hash: Option<BlockHash>,
        registered: usize,
    }

    fn grow(pool: &mut BlockPool, s: &mut Seq, new_tokens: &[u32]) -> bool {
        let bs = pool.block_size();
        let need = (s.tokens.len() + new_tokens.len()).div_ceil(bs);
        if need > s.table.len() {
            match pool.allocate(need - s.table.len()) {
                Some(b) => s.table.extend(b),
                None => return false,
            }
        }
        if !s.tokens.len().is_multiple_of(bs) {
            let last = s.tokens.len() / bs;
            match pool.make_writable(&mut s.table, last) {
                Some(_) => {}
                None => return false,
            }
            // The block about to be written is this sequence's alone.
            assert_eq!(pool.ref_count(s.table[last]), 1, "writing a shared block");
        }
        s.tokens.extend_from_slice(new_tokens);
        while s.registered < s.tokens.len() / bs {
            let i = s.registered;
            let parent = s.last_hash.zip(i.checked_sub(1).map(|p| s.table[p]));
            s.last_hash =
                Some(pool.register_full(s.table[i], parent, &s.tokens[i * bs..(i + 1) * bs]));
            s.registered += 1;
        }
        true
    }

    #[test]
    fn random_allocate_fork_free_evict_never_leaks_or_double_frees() {
        for seed in 1..40u64 {
            let mut rng = Rng(seed * 0x9E37_79B9);
            let mut pool = BlockPool::new(64, 4);
            let mut seqs: Vec<Seq> = Vec::new();
            // A few shared prompt prefixes make prefix hits frequent.
            let prefixes: Vec<Vec<u32>> = (0..3)
                .map(|p| (0..10).map(|t| p * 100 + t).collect())
                .collect();
            for _ in 0..600 {
                match rng.below(5) {
                    0 => {
                        let mut prompt = prefixes[rng.below(3)].clone();
                        prompt.truncate(rng.below(11));
                        prompt.extend((0..rng.below(6)).map(|_| 1000 + rng.below(5) as u32));
                        let (table, last_hash) = pool.take_cached_prefix(&prompt, true);
                        let cached_tokens = table.len() * 4;
                        let mut s = Seq {
                            tokens: prompt[..cached_tokens].to_vec(),
                            registered: table.len(),
                            table,
                            last_hash,
                        };
                        if grow(&mut pool, &mut s, &prompt[cached_tokens..]) {
                            assert_eq!(s.tokens, prompt);
                            seqs.push(s);
                        } else {
                            pool.free(&s.table);
                        }
                    }
                    1 if !seqs.is_empty() => {
                        let i = rng.below(seqs.len());
                        let t = [2000 + rng.below(3) as u32];
                        grow(&mut pool, &mut seqs[i], &t);
                    }
                    2 if !seqs.is_empty() => {
                        let i = rng.below(seqs.len());
                        let s = &seqs[i];
                        pool.share(&s.table);
                        let forked = Seq {
                            tokens: s.tokens.clone(),
                            table: s.table.clone(),
                            last_hash: s.last_hash,
                            registered: s.registered,
                        };
                        seqs.push(forked);
                    }
                    3 | 4 if !seqs.is_empty() => {
                        let s = seqs.swap_remove(rng.below(seqs.len()));
                        pool.free(&s.table);
                    }
                    _ => {}
                }
                pool.check_invariants()
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                // Every live reference is accounted for by the sequences' tables.
                let mut held = vec![0u32; pool.num_blocks()];
                for s in &seqs {
                    for b in &s.table {
                        held[b.0 as usize] += 1;
                    }
                }
                for (b, h) in held.iter().enumerate() {
                    assert_eq!(
                        pool.ref_count(BlockId(b as u32)),
                        *h,
                        "seed {seed}: block {b}"
                    );
                }
            }
            for s in seqs.drain(..) {
                pool.free(&s.table);
            }
            pool.check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(
                pool.num_free(),
                pool.num_blocks(),
                "seed {seed}: blocks leaked"
            );
            assert!(
                pool.stats().hits > 0,
                "seed {seed}: the prefix cache was never hit"
            );
        }
    }

    #[test]
    fn freed_prefix_is_reused_and_evicted_least_recent_first() {
        let mut pool = BlockPool::new(4, 2);
        let a = pool.allocate(2).expect("free blocks");
        let h0 = pool.register_full(a[0], None, &[1, 2]);
        pool.register_full(a[1], Some((h0, a[0])), &[3, 4]);
        pool.free(&a);
        assert_eq!(pool.usage(), 0.0);
        // A lookup that does not count (admission retrying) leaves the statistics alone.
        let (again, _) = pool.take_cached_prefix(&[1, 2, 3, 4, 5], false);
        assert_eq!(again, a);
        assert_eq!(pool.stats(), PrefixCacheStats::default());
        pool.free(&again);
        // Same prompt: both blocks come back, and the hit counters say so.
        let (hit, _) = pool.take_cached_prefix(&[1, 2, 3, 4, 5], true);
        assert_eq!(hit, a);
        assert_eq!(
            pool.stats(),
            PrefixCacheStats {
                queries: 2,
                hits: 2
            }
        );
        // A different first block must not match the second block even though its tokens match.
        let (miss, _) = pool.take_cached_prefix(&[9, 9, 3, 4], true);
        assert!(miss.is_empty());
        pool.free(&hit);
        // Filling the pool evicts the cached blocks; they are then gone from the cache.
        let all = pool.allocate(4).expect("all blocks");
        let (gone, _) = pool.take_cached_prefix(&[1, 2], true);
        assert!(gone.is_empty());
        pool.free(&all);
        pool.check_invariants().expect("consistent");
    }

    #[test]
    fn writing_to_a_shared_block_copies_it_first() {
        let mut pool = BlockPool::new(4, 4);
        let mut a = pool.allocate(1).expect("block");
        pool.share(&a);
        let mut b = a.clone();
        let copy = pool.make_writable(&mut b, 0).expect("a free block");
        let (src, dst) = copy.expect("shared block is copied");
        assert_eq!(src, a[0]);
        assert_ne!(dst, a[0]);
        assert_eq!(pool.ref_count(a[0]), 1);
        assert_eq!(
            pool.make_writable(&mut a, 0),
            Some(None),
            "now private: no copy"
        );
        pool.free(&a);
        pool.free(&b);
        assert_eq!(pool.num_free(), 4);
    }
}
