# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_hw_sim_global_optspecs
    string join \n h/help V/version
end

function __fish_hw_sim_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_hw_sim_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_hw_sim_using_subcommand
    set -l cmd (__fish_hw_sim_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c hw-sim -n "__fish_hw_sim_needs_command" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -s V -l version -d 'Print version'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "idcard" -d 'Resident ID card reader (SAM module, GA 467 serial protocol)'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "gate" -d 'Turnstile IO board (Modbus RTU relays and inputs)'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "qr" -d 'QR scanner module (serial mode: payload + terminator)'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "plate" -d 'Licence-plate camera adapter (PLATE,COLOUR,CONFIDENCE lines)'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "platform" -d 'The central platform on MQTT: identity snapshots and deltas, the site mode, each in a signed envelope; prints what the gates send and checks their `seq`'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "camera" -d 'A camera: holds each frame of a folder in front of the lens, as the image file the daemon reads (`[devices.camera] snapshot_file`)'
complete -c hw-sim -n "__fish_hw_sim_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -l link -d 'Create this symlink to the pty slave (removed on exit)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -l script -d 'Scenario script (place / remove / wait / loop and the misbehaviour steps: garbage / corrupt / truncate / slow / silent / status / unplug)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -l place -d 'Card to cycle through; repeat for several' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -l hold-ms -d 'How long each --place card stays on the reader' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -l gap-ms -d 'Pause between removing one --place card and placing the next' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -l loop -d 'Repeat the cards (or the script) forever'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand idcard" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l link -d 'Create this symlink to the pty slave (removed on exit)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l unit-id -d 'Modbus unit address to answer' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l auto-passage-ms -d 'Delay between an unlock coil turning on and the passage input pulse' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l script -d 'Scenario script (passage / beam / fire / intrusion / input, the misbehaviour steps, wait / loop)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l fire-input -d 'Input of the fire alarm contact' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l beam-input -d 'Input of the tailgating beam' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l intrusion-input -d 'Input of the door-forced / intrusion signal' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l no-auto-passage -d 'Nobody walks through: unlocks do not pulse passage inputs'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -l fire-normally-open -d 'The fire contact is open at rest (default: closed at rest, so the input starts on and an alarm switches it off)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand gate" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l link -d 'Create this symlink to the pty slave (removed on exit)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l terminator -d 'What follows each payload: cr, lf, crlf, tab or none' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l prefix -d 'Text sent before each payload, e.g. the AIM id `]Q1`' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l scan -d 'Payload to scan; repeat for several' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l script -d 'Scenario script (scan / raw / wait / loop and the misbehaviour steps: garbage / corrupt / truncate / slow / silent / unplug)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l gap-ms -d 'Pause after each --scan' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -l loop -d 'Repeat the scans (or the script) forever'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand qr" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand plate" -l link -d 'Create this symlink to the pty slave (removed on exit)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand plate" -l read -d 'A read to send; repeat for several. COLOUR defaults to blue, CONF to 0.95' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand plate" -l script -d 'Scenario script (plate / raw / wait / loop and the misbehaviour steps: garbage / corrupt / truncate / slow / silent / unplug)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand plate" -l gap-ms -d 'Pause after each --read' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand plate" -l loop -d 'Repeat the reads (or the script) forever'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand plate" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l host -d 'MQTT broker host' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l port -d 'MQTT broker port' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l prefix -d 'Topic prefix: `{prefix}/{site}/...`' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l site -d 'The site id: `{prefix}/{site}/...`' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l site-key -d 'The site key file (64 hex characters), to compute credential keys' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l signing-key -d 'The platform\'s Ed25519 private key (64 hex characters, mode 0600): every message is sealed in a signed envelope with it' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l key-id -d 'The key id gates list the key under (default: derived from the key)' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l csv -d 'People: `person_id,category,id_number,name,valid_from,valid_to`' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l generate -d 'Synthetic people instead of a CSV' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l chunk-size -d 'People per snapshot chunk' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l version -d 'The snapshot\'s version' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l delta-from -d 'Publish a delta from this version instead of a snapshot (the CSV rows, if any, are its upserts)' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l delta-to -d 'The version the delta leads to' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l delete -d 'A person to delete in the delta; repeat for several' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l mode -d 'Publish a retained mode change: normal, sporadic or wartime' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l effective-at-ms -d 'When the mode takes effect (default: now)' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l issued-by -d 'Who ordered the mode (department, officer id)' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l reason -d 'Why, for the mode change' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l utc-offset-minutes -d 'The site\'s offset from UTC in minutes, for CSV dates' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l unsigned -d 'Publish bare, unsigned messages (what an intruder sends; gates refuse them)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l once -d 'Publish, wait for the broker\'s acknowledgements, exit'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -l no-answer-sync -d 'Do not answer sync requests'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand platform" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand camera" -l frames -d 'Folder of recorded frames (.png, .jpg, .pgm), shown in name order' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand camera" -l link -d 'The view file to keep replacing (what `snapshot_file` names)' -r -F
complete -c hw-sim -n "__fish_hw_sim_using_subcommand camera" -l hold-ms -d 'How long each frame stays in view' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand camera" -l gap-ms -d 'Empty view between frames' -r
complete -c hw-sim -n "__fish_hw_sim_using_subcommand camera" -l loop -d 'Start again after the last frame'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand camera" -s h -l help -d 'Print help'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "idcard" -d 'Resident ID card reader (SAM module, GA 467 serial protocol)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "gate" -d 'Turnstile IO board (Modbus RTU relays and inputs)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "qr" -d 'QR scanner module (serial mode: payload + terminator)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "plate" -d 'Licence-plate camera adapter (PLATE,COLOUR,CONFIDENCE lines)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "platform" -d 'The central platform on MQTT: identity snapshots and deltas, the site mode, each in a signed envelope; prints what the gates send and checks their `seq`'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "camera" -d 'A camera: holds each frame of a folder in front of the lens, as the image file the daemon reads (`[devices.camera] snapshot_file`)'
complete -c hw-sim -n "__fish_hw_sim_using_subcommand help; and not __fish_seen_subcommand_from idcard gate qr plate platform camera help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
