"""A journaled 30-step flow (kill_child.py's) run under a lease of a given length, for the
lease chaos tests: the test SIGKILLs or SIGSTOPs this process mid-run.

    python lease_child.py SIM_URL STORE_URL RUN_ID OUT.json LEASE_S [--resume]

Exit status 0 with OUT.json written on success; 3 when another executor took the run
over (``LeaseLost``, printed on stderr).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from kill_child import INPUT, TurnTagged, build_flow, config  # tags requests <step>#<turn>

from shoal.errors import LeaseLost
from shoal.flows.resume import resume, run_durable
from shoal.traffic.router import Router


async def main(sim_url: str, store: str, run_id: str, out: Path, lease_s: float,
               again: bool) -> None:
    flow = build_flow()
    async with Router(config(sim_url)) as router:
        client = TurnTagged(router)
        if again:
            result = await resume(run_id, flow, store=store, client=client, lease_s=lease_s)
        else:
            result = await run_durable(flow, INPUT, store=store, run_id=run_id, client=client,
                                       lease_s=lease_s)
    out.write_text(json.dumps({"status": result.status, "outputs": result.outputs}))


if __name__ == "__main__":
    args = sys.argv[1:]
    try:
        asyncio.run(main(args[0], args[1], args[2], Path(args[3]), float(args[4]),
                         "--resume" in args))
    except LeaseLost as exc:
        print(f"LeaseLost: {exc}", file=sys.stderr)
        sys.exit(3)
