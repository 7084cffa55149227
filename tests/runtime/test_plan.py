"""Packing clients into hosts (pure): what `clients_per_actor: auto` chose, and says."""

from fedray.runtime.plan import auto_layout, clients_per_host, group_clients


def _line(num_clients, cpus):
    per_host = clients_per_host("auto", num_clients, cpus)
    hosts = len(group_clients(num_clients, per_host))
    return auto_layout(num_clients, hosts, per_host, cpus, "CPUs")


def test_the_auto_layout_line_suggests_one_actor_per_client_only_when_it_packed():
    # The hello-world: 2 clients on 2 CPUs are one actor each already.
    assert _line(2, 2.0) == (
        "runtime.clients_per_actor=auto: 2 clients on 2 actors, one per client, for 2 CPUs"
    )
    assert _line(8, 2.0) == (
        "runtime.clients_per_actor=auto: 8 clients on 2 actors (4 per actor) for 2 CPUs; "
        "set runtime.clients_per_actor=1 for one actor per client"
    )
