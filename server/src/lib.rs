//! The Cairn team server. It stores tenant namespaces through cairn-store's `Root` and never
//! holds a key: it cannot read what it stores, only check that each upload is the object its
//! name says it is ([`verify`]).

pub mod verify;
