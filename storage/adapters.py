"""The adapters trained jobs produced, known by the name people pick them by in /ask."""

from __future__ import annotations

from storage.models import Adapter
from storage.rows import to_adapter
from storage.store_part import StorePart, first


class AdapterNameTaken(ValueError):
    """An adapter with this name already exists; names are how people pick adapters in /ask."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an adapter named {name!r} already exists; choose another name")
        self.name = name


class AdapterCatalog(StorePart):
    """Part of the Store (storage/store.py): reached as `store.add_adapter(...)`, `store.adapter(...)`."""

    async def add_adapter(self, *, name: str, job_id: int, base_model: str, path: str) -> Adapter:
        """Raises AdapterNameTaken when the name is in use (the UNIQUE constraint is the backstop)."""
        async with self._db.transaction() as db:
            if await db.execute_fetchall("SELECT 1 FROM adapters WHERE name = ?", (name,)):
                raise AdapterNameTaken(name)
            inserted = await db.execute_fetchall(
                "INSERT INTO adapters (name, job_id, base_model, path, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING *",
                (name, job_id, base_model, path, self._clock()),
            )
            return to_adapter(inserted[0])

    async def adapter(self, name: str) -> Adapter | None:
        return first(to_adapter, await self._db.run("SELECT * FROM adapters WHERE name = ?", (name,)))

    async def adapter_of_job(self, job_id: int) -> Adapter | None:
        """The adapter job `job_id` produced (a job produces at most one)."""
        found = await self._db.run(
            "SELECT * FROM adapters WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)
        )
        return first(to_adapter, found)

    async def adapters_of_jobs_named(self, job_name: str) -> list[Adapter]:
        """The adapters of every job called `job_name` (its --name), newest first: people ask by it."""
        found = await self._db.run(
            "SELECT adapters.* FROM adapters JOIN jobs ON jobs.id = adapters.job_id WHERE jobs.name = ?"
            " ORDER BY adapters.id DESC",
            (job_name,),
        )
        return [to_adapter(row) for row in found]

    async def adapters(self, *, limit: int = 50) -> list[Adapter]:
        """Newest first."""
        found = await self._db.run("SELECT * FROM adapters ORDER BY id DESC LIMIT ?", (limit,))
        return [to_adapter(row) for row in found]

    async def set_adapter_hub_repo(self, name: str, repo: str) -> None:
        await self._db.run("UPDATE adapters SET hub_repo = ? WHERE name = ?", (repo, name))
