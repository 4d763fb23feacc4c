//! Relation and type caches: what the latest Relation and Type messages said.
//!
//! pgoutput describes a table once per session (and again after any change
//! to it, e.g. ALTER TABLE) and then sends rows as bare tuples, so the
//! decoder must remember each relation's columns. Every Relation message
//! replaces the cached relation wholesale: a column added, dropped, renamed
//! or retyped shows up from the next Relation message on, and nothing is
//! ever matched by position across versions. Both caches start empty for
//! each replication session, as the server resends what it uses.
//!
//! Column types become a [`TypeKind`] once, when the Relation arrives:
//! built-in OIDs (< 10000) from a fixed table checked against PostgreSQL 15's
//! `pg_type`; other OIDs from the Type message the server sends before the
//! Relation, which for a domain names the *base* type, so domains over
//! built-ins convert like their base. Enums, composites and unknown types
//! are text.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::{Column, Relation, TypeKind};
use super::pgoutput::{RelationBody, TypeBody, COLUMN_FLAG_KEY};

/// Built-in scalar type OIDs with their own conversion.
const SCALARS: &[(u32, &str, Kind)] = &[
    (16, "bool", Kind::Bool),
    (17, "bytea", Kind::Bytea),
    (19, "name", Kind::Text),
    (20, "int8", Kind::Int),
    (21, "int2", Kind::Int),
    (23, "int4", Kind::Int),
    (25, "text", Kind::Text),
    (26, "oid", Kind::Int),
    (114, "json", Kind::Json),
    (650, "cidr", Kind::Text),
    (700, "float4", Kind::Float),
    (701, "float8", Kind::Float),
    (774, "macaddr8", Kind::Text),
    (829, "macaddr", Kind::Text),
    (869, "inet", Kind::Text),
    (1042, "bpchar", Kind::Text),
    (1043, "varchar", Kind::Text),
    (1082, "date", Kind::Text),
    (1083, "time", Kind::Text),
    (1114, "timestamp", Kind::Timestamp),
    (1184, "timestamptz", Kind::Timestamptz),
    (1186, "interval", Kind::Text),
    (1266, "timetz", Kind::Text),
    (1700, "numeric", Kind::Numeric),
    (2950, "uuid", Kind::Text),
    (3802, "jsonb", Kind::Json),
];

/// `(array type OID, element type OID)` for every built-in array type of
/// PostgreSQL 15 whose elements are separated by ',' (`SELECT typarray, oid
/// FROM pg_type WHERE typarray <> 0 AND oid < 10000 AND typdelim = ','`).
/// `box[]` is left out: its delimiter is ';', so it stays text.
const ARRAYS: &[(u32, u32)] = &[
    (143, 142),
    (199, 114),
    (210, 71),
    (270, 75),
    (271, 5069),
    (272, 81),
    (273, 83),
    (629, 628),
    (651, 650),
    (719, 718),
    (775, 774),
    (791, 790),
    (1000, 16),
    (1001, 17),
    (1002, 18),
    (1003, 19),
    (1005, 21),
    (1006, 22),
    (1007, 23),
    (1008, 24),
    (1009, 25),
    (1010, 27),
    (1011, 28),
    (1012, 29),
    (1013, 30),
    (1014, 1042),
    (1015, 1043),
    (1016, 20),
    (1017, 600),
    (1018, 601),
    (1019, 602),
    (1021, 700),
    (1022, 701),
    (1027, 604),
    (1028, 26),
    (1034, 1033),
    (1040, 829),
    (1041, 869),
    (1115, 1114),
    (1182, 1082),
    (1183, 1083),
    (1185, 1184),
    (1187, 1186),
    (1231, 1700),
    (1263, 2275),
    (1270, 1266),
    (1561, 1560),
    (1563, 1562),
    (2201, 1790),
    (2207, 2202),
    (2208, 2203),
    (2209, 2204),
    (2210, 2205),
    (2211, 2206),
    (2287, 2249),
    (2949, 2970),
    (2951, 2950),
    (3221, 3220),
    (3643, 3614),
    (3644, 3642),
    (3645, 3615),
    (3735, 3734),
    (3770, 3769),
    (3807, 3802),
    (3905, 3904),
    (3907, 3906),
    (3909, 3908),
    (3911, 3910),
    (3913, 3912),
    (3927, 3926),
    (4073, 4072),
    (4090, 4089),
    (4097, 4096),
    (4192, 4191),
    (5039, 5038),
    (6150, 4451),
    (6151, 4532),
    (6152, 4533),
    (6153, 4534),
    (6155, 4535),
    (6157, 4536),
];

/// A `const`-friendly mirror of the scalar [`TypeKind`]s.
#[derive(Copy, Clone)]
enum Kind {
    Bool,
    Int,
    Float,
    Numeric,
    Json,
    Bytea,
    Timestamp,
    Timestamptz,
    Text,
}

impl Kind {
    fn to_type_kind(self) -> TypeKind {
        match self {
            Kind::Bool => TypeKind::Bool,
            Kind::Int => TypeKind::Int,
            Kind::Float => TypeKind::Float,
            Kind::Numeric => TypeKind::Numeric,
            Kind::Json => TypeKind::Json,
            Kind::Bytea => TypeKind::Bytea,
            Kind::Timestamp => TypeKind::Timestamp,
            Kind::Timestamptz => TypeKind::Timestamptz,
            Kind::Text => TypeKind::Text,
        }
    }
}

/// The kind of a built-in type OID (< 10000); `None` for OIDs this table
/// does not know (they convert as text).
pub(crate) fn builtin_kind(oid: u32) -> Option<TypeKind> {
    if let Some(&(_, _, k)) = SCALARS.iter().find(|(o, _, _)| *o == oid) {
        return Some(k.to_type_kind());
    }
    ARRAYS.iter().find(|(a, _)| *a == oid).map(|&(_, elem)| {
        let inner = SCALARS
            .iter()
            .find(|(o, _, _)| *o == elem)
            .map_or(TypeKind::Text, |&(_, _, k)| k.to_type_kind());
        TypeKind::Array(Box::new(inner))
    })
}

/// The kind of a type named by a Type message. Built-in names resolve only
/// in `pg_catalog` (sent as ""); a leading '_' is PostgreSQL's array naming,
/// so `_int4` is an array of int4 and `_mood` an array of the enum `mood`.
pub(crate) fn kind_by_name(namespace: &str, name: &str) -> TypeKind {
    match name.strip_prefix('_') {
        // Arrays never nest: the element of `__x` is the type `_x`.
        Some(element) if !element.is_empty() => {
            TypeKind::Array(Box::new(scalar_by_name(namespace, element)))
        }
        _ => scalar_by_name(namespace, name),
    }
}

fn scalar_by_name(namespace: &str, name: &str) -> TypeKind {
    if namespace.is_empty() || namespace == "pg_catalog" {
        if let Some(&(_, _, k)) = SCALARS.iter().find(|(_, n, _)| *n == name) {
            return k.to_type_kind();
        }
    }
    TypeKind::Text
}

/// Type messages seen this session, by OID.
#[derive(Default, Debug)]
pub(crate) struct TypeCache {
    types: HashMap<u32, TypeKind>,
}

impl TypeCache {
    /// Records what a Type message says (replacing an earlier one).
    pub(crate) fn update(&mut self, t: &TypeBody) {
        self.types
            .insert(t.oid, kind_by_name(&t.namespace, &t.name));
    }

    /// How values of this type OID convert: built-in table, then Type
    /// messages, else text.
    fn kind(&self, oid: u32) -> TypeKind {
        builtin_kind(oid)
            .or_else(|| self.types.get(&oid).cloned())
            .unwrap_or(TypeKind::Text)
    }
}

/// Relations seen this session, by OID, shared with the events that use them.
#[derive(Default, Debug)]
pub(crate) struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    /// Replaces the relation with what this Relation message says. An
    /// identical description keeps the existing `Arc`, so events before and
    /// after share it.
    pub(crate) fn update(&mut self, body: RelationBody, types: &TypeCache) -> Arc<Relation> {
        self.insert(Arc::new(Self::build(body, types)))
    }

    /// Caches a relation built elsewhere (e.g. inside a streamed
    /// transaction), keeping the existing `Arc` when nothing changed.
    pub(crate) fn insert(&mut self, relation: Arc<Relation>) -> Arc<Relation> {
        match self.relations.get(&relation.oid) {
            Some(existing) if **existing == *relation => Arc::clone(existing),
            _ => {
                self.relations.insert(relation.oid, Arc::clone(&relation));
                relation
            }
        }
    }

    /// The relation a Relation message describes, with column kinds resolved.
    pub(crate) fn build(body: RelationBody, types: &TypeCache) -> Relation {
        Relation {
            oid: body.oid,
            schema: if body.namespace.is_empty() {
                String::from("pg_catalog")
            } else {
                body.namespace
            },
            name: body.name,
            replica_identity: body.replica_identity,
            columns: body
                .columns
                .into_iter()
                .map(|c| Column {
                    kind: types.kind(c.type_oid),
                    name: c.name,
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    key: c.flags & COLUMN_FLAG_KEY != 0,
                })
                .collect(),
        }
    }

    pub(crate) fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::model::ReplicaIdentity;
    use crate::decode::pgoutput::RelationColumn;

    fn arr(k: TypeKind) -> TypeKind {
        TypeKind::Array(Box::new(k))
    }

    #[test]
    fn builtin_scalars_and_their_arrays() {
        let cases = [
            (16, 1000, TypeKind::Bool),
            (21, 1005, TypeKind::Int),
            (23, 1007, TypeKind::Int),
            (20, 1016, TypeKind::Int),
            (26, 1028, TypeKind::Int),
            (700, 1021, TypeKind::Float),
            (701, 1022, TypeKind::Float),
            (1700, 1231, TypeKind::Numeric),
            (25, 1009, TypeKind::Text),
            (1043, 1015, TypeKind::Text),
            (1042, 1014, TypeKind::Text),
            (19, 1003, TypeKind::Text),
            (114, 199, TypeKind::Json),
            (3802, 3807, TypeKind::Json),
            (2950, 2951, TypeKind::Text),
            (1082, 1182, TypeKind::Text),
            (1083, 1183, TypeKind::Text),
            (1266, 1270, TypeKind::Text),
            (1114, 1115, TypeKind::Timestamp),
            (1184, 1185, TypeKind::Timestamptz),
            (1186, 1187, TypeKind::Text),
            (17, 1001, TypeKind::Bytea),
            (869, 1041, TypeKind::Text),
            (650, 651, TypeKind::Text),
            (829, 1040, TypeKind::Text),
            (774, 775, TypeKind::Text),
        ];
        for (scalar, array, kind) in cases {
            assert_eq!(builtin_kind(scalar), Some(kind.clone()), "oid {scalar}");
            assert_eq!(builtin_kind(array), Some(arr(kind)), "oid {array}");
        }
        // money[] is an array of text; money itself is unknown → text via the cache.
        assert_eq!(builtin_kind(791), Some(arr(TypeKind::Text)));
        assert_eq!(builtin_kind(790), None);
        // box[] uses ';' between elements: not parsed as an array.
        assert_eq!(builtin_kind(1020), None);
        assert_eq!(TypeCache::default().kind(790), TypeKind::Text);
        assert_eq!(TypeCache::default().kind(99999), TypeKind::Text);
    }

    #[test]
    fn type_messages_resolve_by_name() {
        let mut types = TypeCache::default();
        let t = |oid, ns: &str, name: &str| TypeBody {
            xid: None,
            oid,
            namespace: ns.into(),
            name: name.into(),
        };
        types.update(&t(16400, "", "int4")); // domain over int4
        types.update(&t(16401, "public", "mood")); // enum
        types.update(&t(16402, "public", "_mood")); // enum array
        types.update(&t(16403, "", "_text")); // domain over text[]
        types.update(&t(16404, "pg_catalog", "timestamptz"));
        types.update(&t(16405, "public", "int4")); // a user type that shadows a name
        types.update(&t(16406, "public", "citext"));
        assert_eq!(types.kind(16400), TypeKind::Int);
        assert_eq!(types.kind(16401), TypeKind::Text);
        assert_eq!(types.kind(16402), arr(TypeKind::Text));
        assert_eq!(types.kind(16403), arr(TypeKind::Text));
        assert_eq!(types.kind(16404), TypeKind::Timestamptz);
        assert_eq!(types.kind(16405), TypeKind::Text);
        assert_eq!(types.kind(16406), TypeKind::Text);
        assert_eq!(kind_by_name("", "_jsonb"), arr(TypeKind::Json));
        assert_eq!(kind_by_name("", "_"), TypeKind::Text);
        assert_eq!(kind_by_name("public", "__int4"), arr(TypeKind::Text));
    }

    fn body(cols: &[(&str, u32, bool)]) -> RelationBody {
        RelationBody {
            xid: None,
            oid: 16384,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|&(name, type_oid, key)| RelationColumn {
                    flags: u8::from(key),
                    name: name.into(),
                    type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn relations_are_replaced_wholesale_and_shared_while_unchanged() {
        let types = TypeCache::default();
        let mut rels = RelationCache::default();
        assert!(rels.get(16384).is_none());
        let a = rels.update(body(&[("id", 23, true), ("amount", 1700, false)]), &types);
        assert_eq!(a.schema, "public");
        assert_eq!(a.columns[0].kind, TypeKind::Int);
        assert!(a.columns[0].key && !a.columns[1].key);
        assert_eq!(a.columns[1].kind, TypeKind::Numeric);

        let again = rels.update(body(&[("id", 23, true), ("amount", 1700, false)]), &types);
        assert!(Arc::ptr_eq(&a, &again));

        let retyped = rels.update(body(&[("id", 23, true), ("amount", 701, false)]), &types);
        assert!(!Arc::ptr_eq(&a, &retyped));
        assert_eq!(retyped.columns[1].kind, TypeKind::Float);
        let renamed = rels.update(
            body(&[("id", 23, true), ("total", 701, false), ("x", 25, false)]),
            &types,
        );
        assert_eq!(renamed.column_index("total"), Some(1));
        assert_eq!(renamed.column_index("amount"), None);
        assert!(Arc::ptr_eq(rels.get(16384).unwrap(), &renamed));
    }

    #[test]
    fn pg_catalog_namespace_is_spelled_out() {
        let mut b = body(&[]);
        b.namespace = String::new();
        let r = RelationCache::default().update(b, &TypeCache::default());
        assert_eq!(r.schema, "pg_catalog");
    }
}
