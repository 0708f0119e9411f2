//! # tessera-proto
//!
//! The wire contract of Tessera's search service: the `tessera.v1` protobuf
//! package (`proto/tessera/v1/tessera.proto`, every message and field
//! documented there) and the tonic/prost code `build.rs` generates from it.
//! It holds no logic: the server lives in `tessera-engine`.

/// The `tessera.v1` package: messages, the `Tessera` service's client
/// (`tessera_client`) and server (`tessera_server`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tessera.v1");

    /// Encoded `FileDescriptorSet` of the package, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tessera_v1_descriptor.bin"));
}

pub use v1::tessera_client::TesseraClient;
pub use v1::tessera_server::{Tessera, TesseraServer};

/// Packs token vectors as the wire's little-endian f32 bytes.
pub fn pack_vectors(values: &[f32], num_tokens: usize) -> v1::TokenVectors {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    v1::TokenVectors {
        data,
        num_tokens: num_tokens as u32,
    }
}

/// Unpacks the wire's little-endian f32 bytes; `None` when the length is
/// not a multiple of 4.
pub fn unpack_f32(data: &[u8]) -> Option<Vec<f32>> {
    if !data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use v1::FILE_DESCRIPTOR_SET;

    #[test]
    fn vectors_round_trip_through_the_wire_format() {
        let v = [1.0f32, -0.5, 3.25, f32::MIN_POSITIVE];
        let t = pack_vectors(&v, 2);
        assert_eq!(t.data.len(), 16);
        assert_eq!(&t.data[..4], &1.0f32.to_le_bytes());
        let bytes = t.encode_to_vec();
        let back = v1::TokenVectors::decode(bytes.as_slice()).unwrap();
        assert_eq!(unpack_f32(&back.data).unwrap(), v);
        assert_eq!(unpack_f32(&[0, 0, 0]), None);
    }

    #[test]
    fn the_descriptor_set_describes_the_service_as_the_proto_declares_it() {
        // The descriptor is generated from the .proto at build time, so it
        // cannot drift; this checks that it is the one reflection serves.
        let set = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        assert!(set.contains("tessera/v1/tessera.proto"));
        assert!(set.contains("tessera.v1"));
        for m in [
            "Search",
            "GetDocuments",
            "AddDocuments",
            "DeleteDocuments",
            "Compact",
            "IndexInfo",
        ] {
            assert!(set.contains(m), "descriptor lacks {m}");
        }
    }
}
