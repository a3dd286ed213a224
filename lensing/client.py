"""A Python client of the Lensing Serve HTTP API (v1); needs only requests, numpy, astropy and tqdm, no Ray.

    from lensing.client import Client
    client = Client("http://127.0.0.1:8000", api_key=None)
    kappa = client.synthetic_map(mass=1e13, scale_radius=150.0, seed=1)    # (64, 64) float64
    result = client.infer(kappa, mc_samples=50)                            # one map: the API's result dict
    stack = client.infer([kappa, kappa2], seed=[1, 2])                     # a stack: one entry per map
    batch = client.batch(synthetic=[{"mass": m} for m in (1e12, 1e13)])
    status = client.wait(batch["batch_id"])                                # with a progress bar

Maps travel as .npy (a 2-D array is one map, a 3-D array or a list of arrays a stack); a path to a FITS
file is sent as FITS, so its header's geometry cards are used. Options go in the query string; a list
gives one value per map. Requests answered 429 or 503 are retried after the server's Retry-After (at most
`max_retries` times); every other error raises `APIError`, which carries the status and the API's error body.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import requests

NPY = "application/x-npy"
FITS = "application/fits"
RETRY_STATUSES = (429, 503)
PathLike = str | os.PathLike


class APIError(Exception):
    """An error response of the API: `status` (e.g. 422), `body` (the parsed JSON, or the text) and `detail`."""

    def __init__(self, status: int, body: Any, method: str, url: str) -> None:
        self.status, self.body = status, body
        self.detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"{method} {url} -> {status}: {self.detail}")


class Client:
    """The v1 API at `url` (e.g. http://127.0.0.1:8000), with an API key when the service requires one."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0, max_retries: int = 5,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout, self.max_retries = timeout, max_retries
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.retries = 0  # requests retried after a 429 or 503, over this client's life

    # --- the endpoints -----------------------------------------------------------------------------------

    def health(self) -> dict:
        return self._request("GET", "/health").json()

    def models(self) -> dict:
        return self._request("GET", "/api/v1/models").json()

    def synthetic(self, **spec: Any) -> dict:
        """A synthetic map with its coordinates, parameters and geometry (JSON); `convergence_map` as an array."""
        body = self._request("POST", "/api/v1/synthetic", json=spec).json()
        body["convergence_map"] = np.asarray(body["convergence_map"], dtype=np.float64)
        return body

    def synthetic_map(self, **spec: Any) -> np.ndarray:
        """Only the map of a synthetic spec, as a float64 array (sent as .npy: much cheaper than JSON)."""
        response = self._request("POST", "/api/v1/synthetic", json=spec, headers={"Accept": NPY})
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def synthetic_fits(self, path: PathLike, **spec: Any) -> None:
        """Write a synthetic map as FITS (with its WCS and parameter cards) to `path`."""
        response = self._request("POST", "/api/v1/synthetic", json=spec, headers={"Accept": FITS})
        with open(path, "wb") as handle:
            handle.write(response.content)

    def infer(self, maps: np.ndarray | PathLike | Sequence[np.ndarray], **options: Any) -> dict:
        """Infer one map (a 2-D array, or a FITS file with one image): the API's result; or a stack (a 3-D array,
        a list of 2-D arrays, or a FITS cube / multi-image file): `{"results": [...], ...}`, one entry per map
        with its own `status`. An option given as a list applies per map."""
        if isinstance(maps, str | os.PathLike):
            with open(maps, "rb") as handle:
                data, content_type = handle.read(), FITS
        else:
            array = np.asarray(maps) if not isinstance(maps, np.ndarray) else maps
            if array.ndim not in (2, 3):
                raise ValueError(f"maps must be one 2-D map or a stack of them, got shape {array.shape}")
            data, content_type = _npy(array), NPY
        response = self._request("POST", "/api/v1/inference", params=_query(options), data=data,
                                 headers={"Content-Type": content_type}, accept=(200, 207))
        return response.json()

    def batch(self, synthetic: Iterable[Mapping] = (), maps: Iterable[np.ndarray | Mapping] = (),
              job_ids: Iterable[str] = (), **options: Any) -> dict:
        """Submit a batch job (synthetic specs, maps as arrays or {"convergence_map": ..., geometry} dicts, and
        earlier synthetic job ids); returns the acknowledgement with `batch_id`."""
        entries = [{"convergence_map": np.asarray(m).tolist()} if isinstance(m, np.ndarray)
                   else {**m, "convergence_map": np.asarray(m["convergence_map"]).tolist()} for m in maps]
        body = {"synthetic": list(synthetic), "maps": entries, "job_ids": list(job_ids), **options}
        return self._request("POST", "/api/v1/batch", json=body, accept=(202,)).json()

    def batch_status(self, batch_id: str) -> dict:
        return self._request("GET", f"/api/v1/batch/{batch_id}/status").json()

    def wait(self, batch_id: str, poll_s: float = 0.5, timeout: float | None = None, progress: bool = True) -> dict:
        """Poll a batch until it is completed or failed (a tqdm progress bar when `progress`); its final status."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=100.0, unit="%", desc=f"batch {batch_id[:8]}", disable=not progress,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} % [{elapsed}]") as bar:
            while True:
                status = self.batch_status(batch_id)
                bar.update(status["progress"] - bar.n)
                if status["status"] not in ("queued", "running"):
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"batch {batch_id} still {status['status']} after {timeout} s")
                time.sleep(poll_s)

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/api/v1/jobs/{job_id}").json()

    def stats(self) -> dict:
        return self._request("GET", "/api/v1/stats").json()

    # --- transport ---------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, accept: Sequence[int] = (200,), **kwargs: Any) -> requests.Response:
        """Send a request; retry after Retry-After on 429/503; APIError for any other status outside `accept`."""
        url = self.url + path
        for attempt in range(self.max_retries + 1):
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            if response.status_code in accept:
                return response
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                break
            self.retries += 1
            time.sleep(_retry_after(response, attempt))
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise APIError(response.status_code, body, method, url)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _query(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Query parameters; a list or tuple becomes one repeated parameter (one value per map of a stack)."""
    items: list[tuple[str, Any]] = []
    for name, value in options.items():
        values = value if isinstance(value, list | tuple) else [value]
        items += [(name, str(v).lower() if isinstance(v, bool) else v) for v in values]
    return items


def _retry_after(response: requests.Response, attempt: int) -> float:
    """Seconds the server asked to wait (Retry-After in seconds), else an exponential back-off."""
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return min(30.0, 0.5 * 2**attempt)
