//! Conversions from library types to protobuf messages (hits, metadata,
//! index info).

use tessera_index::{Hit, Index};
use tessera_proto::v1 as pb;

pub(crate) fn to_hit(index: &Index, h: Hit, fields: &pb::Fields) -> pb::Hit {
    let doc = (fields.title || fields.text || fields.metadata)
        .then(|| index.hit_document(&h).unwrap_or_default());
    let doc = doc.as_ref();
    pb::Hit {
        id: h.id,
        score: h.score,
        title: doc.filter(|_| fields.title).map(|d| d.title.clone()),
        text: doc.filter(|_| fields.text).map(|d| d.text.clone()),
        metadata_json: doc
            .filter(|_| fields.metadata)
            .map(|d| metadata_json(&d.metadata)),
    }
}

pub(crate) fn metadata_json(v: &serde_json::Value) -> String {
    if v.is_null() {
        "{}".to_owned()
    } else {
        v.to_string()
    }
}
