"""A loopback fake of the Hugging Face Hub's upload and download routes that the real huggingface_hub
client talks to (HfApi(endpoint=hub.url) or HF_ENDPOINT; HF_HUB_DISABLE_XET=1 so uploads take LFS).

    hub = FakeHub({"hf_alice_write_token": "alice"}, orgs={"acme": {"alice"}}).start()
    hub.fail("POST", r"/commit/", status=429, times=1)     # the next commit is rate limited once
    hub.repos["alice/x"].files["adapter_model.safetensors"]  # what was committed
    hub.requests                                             # every request, in the order answered

Routes (as huggingface_hub 2.4 calls them): whoami-v2, repos/create (409 with the repo's url when it
exists), validate-yaml, preupload, the LFS batch/upload/verify, commit (NDJSON), model info (with
`private`), settings (PUT: visibility), tree, and HEAD/GET resolve. A user writes to their own namespace
and to the organisations they belong to. A thread-per-request http.server, so blocking client calls work
from sync code and from worker threads alike.
"""

from tests.fake_hub.hub import FakeHub
from tests.fake_hub.models import FakeRepo, Hold, Request

__all__ = ["FakeHub", "FakeRepo", "Hold", "Request"]
