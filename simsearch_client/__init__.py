"""Python client and command-line tool for the simsearch API (needs httpx; the CLI also tqdm)."""

from simsearch_client.client import JobTimeout, SimsearchClient, SimsearchConnectionError, SimsearchError, image_id_of

__all__ = ["JobTimeout", "SimsearchClient", "SimsearchConnectionError", "SimsearchError", "image_id_of"]
