"""`python -m ntp_rl ...` and `accelerate launch -m ntp_rl ...` run the same CLI as `ntp-rl`."""

from ntp_rl.cli import entry

if __name__ == "__main__":
    entry()
