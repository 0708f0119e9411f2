"""The package's pure parts: routing, merging, fusion, option checks."""

import pathlib
import tempfile
import unittest
from types import SimpleNamespace as Hit

from tessera_ray import merge
from tessera_ray.build import BuildError, _without, expand_inputs
from tessera_ray.routing import fnv1a64, shard_name, shard_of


class Routing(unittest.TestCase):
    def test_fnv1a64_matches_the_published_vectors_and_the_engine(self):
        # The same vectors as the engine's unit test of shard_of.
        self.assertEqual(fnv1a64(b""), 0xCBF29CE484222325)
        self.assertEqual(fnv1a64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(fnv1a64(b"foobar"), 0x85944171F73967E8)
        self.assertEqual(shard_of("foobar", 7), 0x85944171F73967E8 % 7)
        self.assertEqual(shard_name(3), "shard-003")
        with self.assertRaises(ValueError):
            shard_of("x", 0)


class Merging(unittest.TestCase):
    def test_merge_orders_by_score_then_id(self):
        a = [Hit(id="b", score=2.0), Hit(id="d", score=1.0)]
        b = [Hit(id="a", score=2.0), Hit(id="c", score=1.5)]
        self.assertEqual([h.id for h in merge.merge([a, b], 3)], ["a", "b", "c"])

    def test_linear_fusion_normalises_weights_and_keeps_first_seen_order(self):
        dense = [Hit(id="x", score=3.0), Hit(id="y", score=1.0)]
        sparse = [Hit(id="y", score=10.0), Hit(id="z", score=0.0)]
        got = merge.linear_fusion(dense, sparse, 3, 0.4, lambda h, s: (h.id, round(s, 6)))
        # x: 0.6 * 1; y: 0.6 * 0 + 0.4 * 1; z: 0.4 * 0.
        self.assertEqual(got, [("x", 0.6), ("y", 0.4), ("z", 0.0)])
        # Equal scores: the document seen first (dense side) ranks first.
        tie = merge.linear_fusion([Hit(id="p", score=1.0)], [Hit(id="q", score=1.0)], 2, 0.5,
                                  lambda h, s: h.id)
        self.assertEqual(tie, ["p", "q"])

    def test_stats_sum_over_shards(self):
        s = merge.sum_stats([Hit(docs=2, tokens=10, doc_freq={"a": 1}),
                             Hit(docs=3, tokens=5, doc_freq={"a": 2, "b": 1})])
        self.assertEqual(s, {"docs": 5, "tokens": 15, "doc_freq": {"a": 3, "b": 1}})


class Options(unittest.TestCase):
    def test_inputs_expand_globs_and_name_what_is_missing(self):
        with tempfile.TemporaryDirectory() as d:
            for n in ("b.jsonl", "a.jsonl"):
                (pathlib.Path(d) / n).write_text("{}\n")
            got = expand_inputs([f"{d}/*.jsonl", f"{d}/a.jsonl"])
            self.assertEqual([p.name for p in got], ["a.jsonl", "b.jsonl"])
            with self.assertRaisesRegex(BuildError, "no file matches"):
                expand_inputs([f"{d}/*.tsv"])
            with self.assertRaisesRegex(BuildError, "not a file"):
                expand_inputs([d])

    def test_shared_codec_builds_drop_codec_and_centroid_flags(self):
        args = ["--codec", "f32", "--model", "m", "--centroids=64", "--dim", "32"]
        self.assertEqual(_without(args, ("--codec", "--centroids")), ["--model", "m", "--dim", "32"])

    def test_a_non_loopback_ingress_needs_tls_or_insecure(self):
        from tessera_ray.serve import ServeError, ServeOptions, check_exposure

        check_exposure(ServeOptions(shards=pathlib.Path("x"), addr="127.0.0.1:1"))
        with self.assertRaisesRegex(ServeError, "not a loopback address"):
            check_exposure(ServeOptions(shards=pathlib.Path("x"), addr="10.0.0.5:50051"))
        check_exposure(ServeOptions(shards=pathlib.Path("x"), addr="10.0.0.5:50051", insecure=True))

    def test_a_bad_shard_set_manifest_is_named(self):
        from tessera_ray.serve import ServeError, read_shard_set

        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ServeError, "no shard-set manifest"):
                read_shard_set(d)
            m = pathlib.Path(d) / "shards.json"
            m.write_text("{not json")
            with self.assertRaisesRegex(ServeError, "shards.json: not JSON"):
                read_shard_set(d)
            m.write_text('{"format": "tessera-shards", "shards": [{"docs": 1}]}')
            with self.assertRaisesRegex(ServeError, "missing field 'path'"):
                read_shard_set(d)


if __name__ == "__main__":
    unittest.main()
