//! Per-customer serialisation of the insert path.
//!
//! A transaction-level advisory lock per customer *slot*: customers are hashed into 256 slots, and
//! a statement locks the slots of its customers in sorted order, so two statements locking
//! overlapping sets cannot deadlock each other. Slots bound the number of locks a transaction
//! holds: a COPY of a million customers takes 256 locks, not a million (PostgreSQL's shared lock
//! table holds about `max_locks_per_transaction x max_connections` entries in all). Two customers
//! sharing a slot only wait for each other; that is the price, 1 in 256 for two concurrent
//! single-customer statements. Idempotency keys use 256 slots of their own. The lock tag uses a
//! class number of its own (`objsubid` 0x6567 in `pg_locks`; 0x6568 for idempotency keys), so it
//! never collides with an application's advisory locks, which use 1 and 2.

use pgrx::prelude::*;

const CUSTOMER_LOCK_CLASS: u16 = 0x6567;
const IDEMPOTENCY_LOCK_CLASS: u16 = 0x6568;

/// How many lock slots each class has.
const SLOTS: u64 = 256;

/// A stable slot for a customer id or key: 64-bit FNV-1a, a hash fixed by its definition, so
/// every backend agrees on the slot whatever Rust release built its library (the standard
/// library's `DefaultHasher` may change its algorithm between releases, and two builds running
/// side by side during an upgrade would then lock different slots for one customer).
fn key(text: &str) -> u64 {
    slot(text.bytes())
}

fn slot(bytes: impl Iterator<Item = u8>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes.fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    hash % SLOTS
}

/// Blocks until this transaction holds the lock of each customer's slot.
pub fn lock_customers<'a>(customer_ids: impl Iterator<Item = &'a str>) {
    let mut keys: Vec<u64> = customer_ids.map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        lock(CUSTOMER_LOCK_CLASS, k);
    }
}

/// Blocks until this transaction holds the lock of the slot of a customer's idempotency key
/// (keys are per customer; a NUL, which no text value holds, separates the two). Hashed in place:
/// no string is built per row.
pub fn lock_idempotency_key(customer_id: &str, idempotency_key: &str) {
    let bytes = customer_id.bytes().chain(std::iter::once(0)).chain(idempotency_key.bytes());
    lock(IDEMPOTENCY_LOCK_CLASS, slot(bytes));
}

fn lock(class: u16, k: u64) {
    let tag = pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the life of a backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (k >> 32) as u32,
        locktag_field3: k as u32,
        locktag_field4: class,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: a valid advisory tag; a transaction (not session) lock, waiting if needed.
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_fnv_1a_and_never_change() {
        // FNV-1a 64 of "" and "a" are the published test vectors; the slots are them mod 256.
        assert_eq!(key(""), 0xcbf2_9ce4_8422_2325 % SLOTS);
        assert_eq!(key("a"), 0xaf63_dc4c_8601_ec8c % SLOTS);
        // Pinned: a change here moves customers to other slots while old backends still run.
        assert_eq!([key("c1"), key("c2"), key("customer-42"), key("über")], [89, 64, 158, 175]);
        // An idempotency key's slot hashes customer, NUL and key as one text would.
        let parts = "c1".bytes().chain(std::iter::once(0)).chain("k-7".bytes());
        assert_eq!(slot(parts), key("c1\0k-7"));
    }
}
