package interventions

import "testing"

// The health-word check catches the forms a message would use, and leaves
// the messages Handoff's workflows send alone.
func TestSensitiveWords(t *testing.T) {
	for _, m := range []string{
		"Ask about the methadone dose", "Bring the opioids list", "He overdosed last week", "After she relapsed",
		"Withdrawals are hard", "Two treatments left", "Your Al-Anon meeting is at 7", "Alcoholics Anonymous at the church",
		"Sobriety check-in", "A sober ride home", "Substances in the house", "Recovery group tonight",
		"Your NA meeting is at 7", "AA tonight", "Dosing at 7", "Sublocade shot Friday", "IOP starts Monday",
		"Call your sponsor", "Outpatient intake at 9", "Step 4 of the 12-step work",
		"Reminder: Dad's intervention is Tue at 6 PM", "Family meeting about Mom's drinking", "Bring her pills and the dosage card",
		"He was using meth again", "Cocaine in the car", "Her Xanax ran out", "Oxy in the drawer", "Pick up the prescription",
		"Medication pickup at 5", "Therapy at 4", "See the psychiatrist Monday", "Kratom from the gas station",
		"Your syringe services visit is at 3 PM", "Needle exchange opens at 9", "Harm reduction kit pickup", "Harm-reduction van at noon",
		"The psychologist will call", "Mental health check at 2",
		"No beer in the house", "Bring the wine back", "Vodka in the closet", "The liquor store on Main", "He OD'd on Friday",
		"After the OD", "Ketamine at the party", "His Adderall ran out", "Suicide hotline", "Suicidal thoughts again",
		"Her depression is back", "Bipolar check-in", "PTSD group", "Hospital visit at 3", "Since the hospitalization",
		"Your MOUD visit is at 9", "The OTP opens at 6", "Bupe refill Friday", "Codeine in the cabinet", "Xylazine test strips",
		"Carfentanil warning", "Lucemyra starts today", "HIV test at noon", "Hepatitis shot Monday", "Hep C results",
		"Anxiety group at 5", "Psych visit Tuesday",
		"Methadose pickup at 7", "Your Subutex refill is ready", "Dilaudid in the cabinet", "Kloxxado kit at the front desk",
		"Dolophine at 8", "Probuphine check Friday",
	} {
		if !sensitive.MatchString(m) {
			t.Errorf("%q passes the health-word check", m)
		}
	}
	for _, m := range []string{
		"Reminder: family meeting on Tue Dec 8 at 6:00 PM CST.", "Reminder: appointment on Wed Dec 9 at 9:00 AM CST.",
		"Reminder: you facilitate a family meeting on Tue Dec 8 at 6:00 PM CST.", "Your counselor will check in with you soon. How are you doing?",
		"A note from your counselor: hold to the steps your family agreed on together. We are here if you want to talk.",
		"The intake appointment was missed: please reach out today and help rebook.", "Please record how the family meeting went.",
		// Words that only contain a stem are not refused.
		"Bring oxygen for the hike", "A drink after work", "The method we agreed on", "Pull the weeds on Saturday",
		"Let's go to the movies at 7", "Good news on Monday", "Wineberry jam for the picnic",
	} {
		if sensitive.MatchString(m) {
			t.Errorf("%q is refused as health detail", m)
		}
	}
}

// A failure's reason loses every phone number in it, in the forms
// providers in and outside the US write them, and keeps error codes,
// times and dates.
func TestFailureReasonLosesAddresses(t *testing.T) {
	for _, c := range []struct{ reason, want string }{
		{"undeliverable to 07911 123456", "undeliverable to [address]"},
		{"undeliverable to 020 7946 0958", "undeliverable to [address]"},
		{"no route to 44 7911 123456", "no route to [address]"},
		{"bad number 555.1234567", "bad number [address]"},
		{"bad number 555-123-4567", "bad number [address]"},
		{"+44 7911 123456 unreachable", "[address] unreachable"},
		{"mailbox sam@example.org full", "mailbox [address] full"},
		{"no route to 0044 7911 123456", "no route to [address]"},
		{"undeliverable to (020) 7946 0958", "undeliverable to [address]"},
		{"numéro 06 12 34 56 78 inconnu", "numéro [address] inconnu"},
		// Left as they are.
		{"21614 at 10:00:00", "21614 at 10:00:00"},
		{"HTTP 503 at 2026-12-07 10:30:00Z", "HTTP 503 at 2026-12-07 10:30:00Z"},
		{"failed 7-12-2026 10:30, error 30007, retry in 120 s", "failed 7-12-2026 10:30, error 30007, retry in 120 s"},
		{"carrier 3 rejected (code 4 0301)", "carrier 3 rejected (code 4 0301)"},
		{"relay 192.168.100.200 refused at 00:30", "relay 192.168.100.200 refused at 00:30"},
	} {
		if got := cleanFailureReason(c.reason, ""); got != c.want {
			t.Errorf("cleanFailureReason(%q) = %q; want %q", c.reason, got, c.want)
		}
	}
	// The message is replaced where quoted; one too short to say anything
	// is left, rather than break up the reason's words.
	for _, c := range []struct{ reason, message, want string }{
		{"body 'See you Tuesday at 9' rejected", "See you Tuesday at 9", "body '[message]' rejected"},
		{"High latency at the carrier", "Hi", "High latency at the carrier"},
	} {
		if got := cleanFailureReason(c.reason, c.message); got != c.want {
			t.Errorf("cleanFailureReason(%q, %q) = %q; want %q", c.reason, c.message, got, c.want)
		}
	}
}
