# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gatectl_global_optspecs
    string join \n h/help V/version
end

function __fish_gatectl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gatectl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gatectl_using_subcommand
    set -l cmd (__fish_gatectl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gatectl -n "__fish_gatectl_needs_command" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_needs_command" -s V -l version -d 'Print version'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "keygen" -d 'Create a new site key file (64 hex characters, mode 0600)'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "check-config" -d 'Validate a configuration file; exit status 64 on a bad file'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "identity" -d 'The local identity table'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "mode" -d 'The site mode (normal, sporadic, wartime)'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "pass" -d 'Visitor QR passes (platform side, for demos, tests and commissioning)'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "status" -d 'The running daemon: mode, policy, identity version and last sync, broker, outbox, each device\'s health and counters, uptime, version'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "tail" -d 'Follows decisions and alarms as they happen (identities masked) until Ctrl-C'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "lookup" -d 'What the gate would decide now for a credential, and why, with the person\'s validity dates and state. A dry run: nothing is recorded and the gate does not move. Exit status 0 for a pass, 1 for a block'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "open" -d 'Unlocks the gate by hand. Recorded first as an event with your local user name and the reason'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "selftest" -d 'Commissioning: checks each device (SAM replies, Modbus input reads, ports open), pulses each wired unlock output (recorded), and prints a PASS/FAIL line per device. Exit status 1 when any check fails'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "ports" -d 'The serial ports present, with USB vendor/product ids and stable /dev/serial/by-id names, to fill in `[devices.*] port`. Needs no daemon'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "outbox" -d 'The outbox: events waiting for the broker, the oldest, by topic'
complete -c gatectl -n "__fish_gatectl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand keygen" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand check-config" -l config -d 'The same file, named as the daemon\'s and the other commands\' `--config` names it' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and not __fish_seen_subcommand_from import help" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and not __fish_seen_subcommand_from import help" -f -a "import" -d 'Import people from a CSV file with the header `person_id,category,id_number,name,valid_from,valid_to` (dates YYYY-MM-DD). All rows are checked first; one bad row and nothing is applied'
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and not __fish_seen_subcommand_from import help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and __fish_seen_subcommand_from import" -l config -d 'The gate\'s configuration (site key and database)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and __fish_seen_subcommand_from import" -l encoding -d 'The file\'s text encoding. Without it: UTF-8 when the file is valid UTF-8, else GBK when it is valid GBK (and it says so)' -r -f -a "utf-8\t'UTF-8, with or without a byte-order mark'
gbk\t'GBK, read as GB 18030 (its superset): what Excel saves on a Chinese Windows machine'"
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and __fish_seen_subcommand_from help" -f -a "import" -d 'Import people from a CSV file with the header `person_id,category,id_number,name,valid_from,valid_to` (dates YYYY-MM-DD). All rows are checked first; one bad row and nothing is applied'
complete -c gatectl -n "__fish_gatectl_using_subcommand identity; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and not __fish_seen_subcommand_from show set help" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and not __fish_seen_subcommand_from show set help" -f -a "show" -d 'Show the mode in force and any scheduled change'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and not __fish_seen_subcommand_from show set help" -f -a "set" -d 'Override the mode now, as a technician (no platform key needed). Sent to the running daemon over its control socket, which records it as an event with your login (named from your uid, never $USER) and the reason, and follows it at its next decision; with the daemon stopped, written to its database directly. The platform\'s next mode message overrides it again'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and not __fish_seen_subcommand_from show set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from show" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from set" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from set" -l reason -d 'Why (kept with the event)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show the mode in force and any scheduled change'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from help" -f -a "set" -d 'Override the mode now, as a technician (no platform key needed). Sent to the running daemon over its control socket, which records it as an event with your login (named from your uid, never $USER) and the reason, and follows it at its next decision; with the daemon stopped, written to its database directly. The platform\'s next mode message overrides it again'
complete -c gatectl -n "__fish_gatectl_using_subcommand mode; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and not __fish_seen_subcommand_from keygen issue help" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and not __fish_seen_subcommand_from keygen issue help" -f -a "keygen" -d 'Create an Ed25519 signing key (private key file, mode 0600) and print the `[platform] signing_keys` entry that makes gates trust it'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and not __fish_seen_subcommand_from keygen issue help" -f -a "issue" -d 'Seal a visitor pass in the platform\'s signed envelope and print its QR text (VP2....)'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and not __fish_seen_subcommand_from keygen issue help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from keygen" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l config -d 'The gate\'s config: gives the site and the site key for the visitor\'s ID-number hash' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l key -d 'The platform\'s private key file (readable by its owner only)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l key-id -d 'The key id the gates know this key by in `[platform] signing_keys` (default: the id `pass keygen` printed, derived from the key)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l pass-id -d 'The pass\'s id, unique on the platform (shown in events and used for revocation)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l host -d 'The host\'s person id' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l visitor-id-number -d 'The visitor\'s ID number (hashed under the site key; never printed)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l from-ms -d 'Valid from, milliseconds since the epoch (default: now)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l hours -d 'Valid for this many hours (default 24)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l gates -d 'Gates it is valid at (default: every gate of the site)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -l uses -d 'How many passages (0 = unlimited)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from issue" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from help" -f -a "keygen" -d 'Create an Ed25519 signing key (private key file, mode 0600) and print the `[platform] signing_keys` entry that makes gates trust it'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from help" -f -a "issue" -d 'Seal a visitor pass in the platform\'s signed envelope and print its QR text (VP2....)'
complete -c gatectl -n "__fish_gatectl_using_subcommand pass; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand status" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand status" -l json -d 'One JSON object, for scripts'
complete -c gatectl -n "__fish_gatectl_using_subcommand status" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand tail" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand tail" -l json -d 'One JSON object per line, for scripts'
complete -c gatectl -n "__fish_gatectl_using_subcommand tail" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -l id-number -d 'A resident ID number (sent to the daemon only; never printed in clear)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -l card -d 'An IC card UID (hex)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -l plate -d 'A vehicle plate' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -l side -d 'entry or exit (default: the gate\'s usual side)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -l json -d 'Print one JSON object instead of text, for scripts'
complete -c gatectl -n "__fish_gatectl_using_subcommand lookup" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand open" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand open" -l reason -d 'Why (kept with the event)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand open" -l side -d 'entry or exit (default: the gate\'s usual side)' -r
complete -c gatectl -n "__fish_gatectl_using_subcommand open" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand selftest" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand selftest" -l no-pulse -d 'Do not pulse the unlock outputs'
complete -c gatectl -n "__fish_gatectl_using_subcommand selftest" -l json -d 'Print one JSON object instead of text, for scripts'
complete -c gatectl -n "__fish_gatectl_using_subcommand selftest" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand ports" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand outbox" -l config -d 'The gate\'s configuration file (the daemon\'s socket, database and site key are found from it)' -r -F
complete -c gatectl -n "__fish_gatectl_using_subcommand outbox" -l json -d 'Print one JSON object instead of text, for scripts'
complete -c gatectl -n "__fish_gatectl_using_subcommand outbox" -s h -l help -d 'Print help'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "keygen" -d 'Create a new site key file (64 hex characters, mode 0600)'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "check-config" -d 'Validate a configuration file; exit status 64 on a bad file'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "identity" -d 'The local identity table'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "mode" -d 'The site mode (normal, sporadic, wartime)'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "pass" -d 'Visitor QR passes (platform side, for demos, tests and commissioning)'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "status" -d 'The running daemon: mode, policy, identity version and last sync, broker, outbox, each device\'s health and counters, uptime, version'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "tail" -d 'Follows decisions and alarms as they happen (identities masked) until Ctrl-C'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "lookup" -d 'What the gate would decide now for a credential, and why, with the person\'s validity dates and state. A dry run: nothing is recorded and the gate does not move. Exit status 0 for a pass, 1 for a block'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "open" -d 'Unlocks the gate by hand. Recorded first as an event with your local user name and the reason'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "selftest" -d 'Commissioning: checks each device (SAM replies, Modbus input reads, ports open), pulses each wired unlock output (recorded), and prints a PASS/FAIL line per device. Exit status 1 when any check fails'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "ports" -d 'The serial ports present, with USB vendor/product ids and stable /dev/serial/by-id names, to fill in `[devices.*] port`. Needs no daemon'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "outbox" -d 'The outbox: events waiting for the broker, the oldest, by topic'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and not __fish_seen_subcommand_from keygen check-config identity mode pass status tail lookup open selftest ports outbox help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and __fish_seen_subcommand_from identity" -f -a "import" -d 'Import people from a CSV file with the header `person_id,category,id_number,name,valid_from,valid_to` (dates YYYY-MM-DD). All rows are checked first; one bad row and nothing is applied'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and __fish_seen_subcommand_from mode" -f -a "show" -d 'Show the mode in force and any scheduled change'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and __fish_seen_subcommand_from mode" -f -a "set" -d 'Override the mode now, as a technician (no platform key needed). Sent to the running daemon over its control socket, which records it as an event with your login (named from your uid, never $USER) and the reason, and follows it at its next decision; with the daemon stopped, written to its database directly. The platform\'s next mode message overrides it again'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and __fish_seen_subcommand_from pass" -f -a "keygen" -d 'Create an Ed25519 signing key (private key file, mode 0600) and print the `[platform] signing_keys` entry that makes gates trust it'
complete -c gatectl -n "__fish_gatectl_using_subcommand help; and __fish_seen_subcommand_from pass" -f -a "issue" -d 'Seal a visitor pass in the platform\'s signed envelope and print its QR text (VP2....)'
