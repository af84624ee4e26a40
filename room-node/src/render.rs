//! A document's top-level shared types as JSON, for the server API's
//! `?format=json` and the state callback.
//!
//! Top-level types that arrived in an update are untyped until someone
//! asks for them by type (Yjs works the same way); their type is inferred
//! from their content as yrs does it: keyed entries → map, a sequence of
//! strings → text, any other sequence → array (XML nodes render as XML
//! strings). An empty type renders as `null`.

use serde_json::{Map, Value};
use yrs::types::{AsPrelim, ToJson};
use yrs::Number;
use yrs::{
    Any, ArrayRef, Doc, GetString, In, MapRef, Out, ReadTxn, TextRef, Transact, XmlElementRef,
    XmlTextRef,
};

/// `{name: content}` for every top-level type of `doc`.
pub fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut object = Map::new();
    for (name, value) in txn.root_refs() {
        let any = match value {
            Out::UndefinedRef(branch) => match value.as_prelim(&txn) {
                In::Map(_) => MapRef::from(branch).to_json(&txn),
                In::Array(_) => ArrayRef::from(branch).to_json(&txn),
                In::Text(_) => Any::from(TextRef::from(branch).get_string(&txn)),
                In::XmlText(_) => Any::from(XmlTextRef::from(branch).get_string(&txn)),
                In::XmlElement(_) => Any::from(XmlElementRef::from(branch).get_string(&txn)),
                _ => Any::Null,
            },
            typed => typed.to_json(&txn),
        };
        object.insert(name.to_owned(), any_to_json(&any));
    }
    Value::Object(object)
}

fn any_to_json(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(n)) => Value::from(*n),
        Any::Number(Number::Float(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Any::String(s) => Value::String(s.to_string()),
        // Binary content has no JSON form; base64 would be a guess.
        Any::Buffer(_) => Value::Null,
        Any::Array(items) => Value::Array(items.iter().map(any_to_json).collect()),
        Any::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), any_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Map as _, StateVector, Text, Update, WriteTxn};

    #[test]
    fn untyped_top_level_types_render_by_their_content() {
        // Written with types, read back from an update: untyped, as the
        // room node holds them.
        let source = Doc::new();
        {
            let mut txn = source.transact_mut();
            txn.get_or_insert_text("title").insert(&mut txn, 0, "Notes");
            let meta = txn.get_or_insert_map("meta");
            meta.insert(&mut txn, "pages", 3);
            meta.insert(&mut txn, "draft", true);
            let list = txn.get_or_insert_array("tags");
            list.push_back(&mut txn, "a");
            list.push_back(&mut txn, 2);
        }
        let update = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        assert_eq!(
            doc_to_json(&doc),
            serde_json::json!({
                "title": "Notes",
                "meta": {"pages": 3, "draft": true},
                "tags": ["a", 2],
            })
        );
        assert_eq!(doc_to_json(&Doc::new()), serde_json::json!({}));
    }
}
