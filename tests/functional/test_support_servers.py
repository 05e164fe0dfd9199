"""Proof that the shared test servers and the synthetic model generator work."""

from streamer import synth


def test_synth_llama_round_trip(synth_model):
    from safetensors.numpy import load_file

    spec = synth_model.spec
    for shard in synth_model.shards:
        for name, value in load_file(synth_model.path / shard).items():
            assert value.tobytes() == synth.llama_tensor(spec, name).tobytes()


def test_moto_lists(moto, s3_bucket, synth_model):
    keys = moto.upload_tree(synth_model.path, bucket=s3_bucket, prefix="m")
    listed = moto.client().list_objects_v2(Bucket=s3_bucket, Prefix="m/")["Contents"]
    assert sorted(o["Key"] for o in listed) == keys


async def test_origin_range(origin, synth_model):
    import aiohttp

    srv = await origin(synth_model.path.parent)
    async with aiohttp.ClientSession() as s, s.get(
        srv.http_url(f"{synth_model.path.name}/config.json"), headers={"Range": "bytes=0-9"}
    ) as r:
        assert r.status == 206
        assert len(await r.read()) == 10
