"""Budget scopes: the global scope and one per tenant, in separate namespaces.

Tenant names that would collide with the global scope are refused at every edge (see
`domain.validate.tenant`), so a scope string is either `GLOBAL` or a tenant's name.
"""

from __future__ import annotations

GLOBAL = "global"


def scopes_for(tenant: str) -> tuple[str, ...]:
    """The scopes a request is charged to: global first, then its tenant (if any)."""
    return (GLOBAL, tenant) if tenant and tenant != GLOBAL else (GLOBAL,)
